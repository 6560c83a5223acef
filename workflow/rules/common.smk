# Shared helpers: config validation, the effective-config file every rule reads, rerun hashes.
# Result paths come from bcr/contracts.py; rules refer to each other's outputs (rules.X.output).
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from bcr import config as bcr_config
from bcr import contracts as C
from bcr.codehash import command_hash

REPO = Path(workflow.basedir)
RUN_CONFIG = C.RUN_CONFIG.path()
# The claim ledger's rules (the ledger decides with them; the timed promotion runs and the serving
# summary read their headline and bootstrap settings).
CLAIMS_FILE = str(REPO / "config" / "claims.yaml")
# Every rule's software (used with --sdm conda on the cluster; the CPU default runs in .venv).
BCR_ENV = "../envs/bcr.yaml"
_sources = ", ".join(str(f) for f in workflow.configfiles) or "config"

try:
    # The Snakefile loads the default only when the command line names no config file; a file that
    # is named must be one complete config, optionally followed by overlays (bcr.config.check_layers).
    bcr_config.read_layers(workflow.configfiles)
    bcr_config.validate(config, source=_sources)
except bcr_config.ConfigError as exc:
    raise WorkflowError(str(exc)) from None

CONTEXTS = [int(c) for c in config["prompts"]["contexts"]]
# Every model of the config by name (the primary first); each local one has its training rule.
MODELS = {m["name"]: m for m in bcr_config.models(config)}
MODEL_NAMES = list(MODELS)
PRIMARY_MODEL = config["model"]["name"]
# Every job computes on runtime.threads torch threads (outputs are bit-identical only at one thread
# count); a job that times something reserves runtime.timed_job_cores from the scheduler (the
# default: the whole 2-core machine), so nothing runs beside it, while untimed jobs run side by side.
THREADS = int(config["runtime"]["threads"])
TIMED_THREADS = max(THREADS, int(config["runtime"].get("timed_job_cores") or THREADS))


def section_hash(*keys):
    """Hash of the named top-level config sections: a rule reruns when one of them changes."""
    return bcr_config.config_hash({k: config.get(k) for k in keys})


def benchmark_path(rule, wildcards=""):
    """Where Snakemake's own ``benchmark:`` of a job goes (wall s, max RSS, CPU s; gathered into
    results/run/benchmarks.parquet by the ledger step)."""
    return C.BENCHMARK.path(rule=rule, job=wildcards or "job")


def key_path_pairs(keys, paths):
    """``KEY=PATH`` arguments (a command's per-context or per-mode inputs), in order."""
    return " ".join(f"{k}={p}" for k, p in zip(keys, paths, strict=True))


def train_rule_name(name):
    """``train_tiny_model`` for the primary (the name the docs use), ``train_<name>`` otherwise."""
    return "train_tiny_model" if name == PRIMARY_MODEL else f"train_{name.replace('-', '_')}"


def model_checkpoint_files(model=None):
    """A committed tiny checkpoint, the primary's by default (absolute, so a --directory elsewhere
    still finds it); none for a hub model."""
    model = config["model"] if model is None else model
    if model["source"] != "local":
        return []
    path = Path(model["path"])
    path = path if path.is_absolute() else REPO / path
    return [str(path / "model.safetensors"), str(path / "config.json")]


def promotion_timed(w):
    """Latency is claimed on the primary family at the timed contexts; the other promotion jobs
    measure exactness only (and run beside other untimed jobs)."""
    # PRIMARY_FAMILY is set in prompts.smk, TIERED_TIMED_CONTEXTS in tiered.smk
    return w.workload == PRIMARY_FAMILY and int(w.context) in TIERED_TIMED_CONTEXTS


def dense_timed(w):
    """The dense baseline keeps its clocks for the primary family only (the baseline page's
    latency rows); every other family's job measures tokens and KV bytes beside other jobs."""
    return w.workload == PRIMARY_FAMILY


def _write_run_config(path: str) -> None:
    """The effective config (files + --config overrides), read by every rule's command.

    Written while the workflow is parsed, and only when its content changes: it is a source file
    for the rules (``ancient`` inputs), never a job output, so writing it cannot make jobs "updated
    by another job" — each rule reruns only through its own params (config-section and code hashes).
    """
    from bcr.io import write_text

    text = yaml.safe_dump(dict(config), sort_keys=False)
    target = Path(path)
    if not target.is_file() or target.read_text() != text:
        write_text(text, target)


_write_run_config(RUN_CONFIG)
