"""One home for names: the registries, the config schemas and the ledger agree with bcr.contracts."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from bcr import config as cfgmod
from bcr import contracts as C


def _schema(name: str) -> dict:
    return yaml.safe_load((cfgmod.SCHEMAS / name).read_text())


def test_arm_registry_schema_and_cli_agree_with_the_contract():
    from bcr.cli import build_parser
    from bcr.prefix import arms, plugin

    assert tuple(arms.ARM_REGISTRY) == C.ARMS
    assert set(plugin.FACTORIES) == set(arms.PLUGIN_BACKENDS)
    enum = _schema("serving.schema.yaml")["properties"]["cache_ops"]["properties"]["arms"]["items"]["enum"]
    assert tuple(enum) == C.ARMS
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prefix", "server-cmd", "--config", "x.yaml", "--arm", "nope"])


def test_decode_path_registry_and_schema_agree_with_the_contract():
    from bcr.tiered.paths import PATHS

    assert tuple(PATHS) == C.DECODE_PATHS and C.DENSE_PATH not in PATHS
    enum = _schema("tiered.schema.yaml")["properties"]["decode_paths"]["items"]["enum"]
    assert tuple(enum) == C.DECODE_PATHS


def test_result_paths_are_built_from_patterns():
    assert C.DENSE.path() == "results/dense/{workload}/{context}.parquet"
    assert C.DENSE.path(workload="needle", context=2048) == "results/dense/needle/2048.parquet"
    assert C.TIERED_PROMOTION.path(context=4096) == "results/tiered/{workload}/promotion/{mode}/4096.parquet"
    assert C.SERVING_REQUESTS.glob == "serving/*/*/*.parquet"
    assert C.SERVING_REQUESTS.wildcards == ("engine", "workload", "arm")
    assert all(f.path().startswith(C.RESULTS_ROOT + "/") for f in C.RESULT_FILES.values())
    assert len({f.pattern for f in C.RESULT_FILES.values()}) == len(C.RESULT_FILES)


def test_writers_use_the_contract_columns():
    from bcr import dense, prompts
    from bcr.prefix import bench
    from bcr.tiered import harness

    assert prompts.PROMPT_COLUMNS is C.PROMPT_COLUMNS
    assert dense.DENSE_COLUMNS is C.DENSE_COLUMNS
    assert bench.CACHE_OPS_COLUMNS is C.CACHE_OPS_COLUMNS
    assert harness.COLUMNS[: len(C.TIERED_COLUMNS)] == C.TIERED_COLUMNS


def test_the_ledger_reads_by_the_contract(tmp_path):
    from bcr.ledger.evidence import load_results

    results = load_results(tmp_path)
    assert results["peers"].pattern.endswith(C.PEERS.glob)
    assert results["tiered_promotion"].pattern.endswith(C.TIERED_PROMOTION.glob)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_the_ledger_and_site_import_no_track_module_and_no_torch():
    mods = _modules_after(
        "import bcr.ledger.cli, bcr.ledger.claims, bcr.ledger.evidence, bcr.ledger.render, bcr.ledger.site"
    )
    tracks = sorted(m for m in mods if m.startswith(("bcr.tiered", "bcr.prefix", "bcr.serving")))
    assert tracks == [], tracks
    assert "torch" not in mods and "bcr.commands" not in mods


def test_building_the_cli_loads_no_model_stack():
    mods = _modules_after("from bcr.cli import build_parser\nbuild_parser()")
    assert "torch" not in mods and "transformers" not in mods


def test_import_bcr_changes_no_environment():
    """The SGLang plug-in imports bcr in every server process: importing must leave it as it was."""
    code = (
        "import os\nbefore = dict(os.environ)\n"
        "import bcr, bcr.prefix.plugin, bcr.contracts, bcr.config\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OMP_")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def test_the_cli_sets_passive_openmp_waits_for_its_own_process(monkeypatch):
    import os

    from bcr import cli

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_each_contract_names_the_rule_whose_output_it_is():
    """A result file's `rule` is the rule that writes it (its output is built from that contract)."""
    import re
    from pathlib import Path

    rules_dir = Path(__file__).resolve().parent.parent / "workflow" / "rules"
    outputs: dict[str, str] = {}
    for smk in rules_dir.glob("*.smk"):
        for m in re.finditer(r"^\s*(?:rule|checkpoint) (\w+):\n(.*?)(?=^\s*(?:rule|checkpoint) \w+:|\Z)",
                             smk.read_text(), re.S | re.M):  # fmt: skip
            out = re.search(r"\n\s+output:\n(.*?)\n\s+(?:wildcard_constraints|params|log):", m.group(2), re.S)
            for name in re.findall(r"C\.([A-Z_]+)\.path\(", out.group(1) if out else ""):
                outputs[name] = m.group(1)
    for name, spec in vars(C).items():
        if isinstance(spec, C.ResultFile) and spec.rule is not None and name != "RUN_CONFIG":
            assert outputs.get(name) == spec.rule, (name, spec.rule, outputs.get(name))
    assert {n for n, r in outputs.items() if getattr(C, n).rule != r} == set()
