"""The workflow itself: profile discovery, config errors before any job, a real tiny end-to-end run,
and code-hash rerun triggers.  The end-to-end run uses a copy of the repository in a temp dir so
that touching code there cannot disturb the checkout under test."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bcr.provenance import PROVENANCE_COLUMNS

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# What a checkout holds beyond a fresh clone: every environment (.venv-peers links the main torch
# family, which a copy would turn into gigabytes), outputs, caches, screenshots.
IGNORE = shutil.ignore_patterns(
    ".venv*", ".git", "results", "logs", ".snakemake", "__pycache__", ".*_cache", "*.egg-info",
    "test-artifacts", ".hypothesis", "build",
)  # fmt: skip

# The tiny end-to-end run: three short contexts (sweep + two promotion contexts), two prompts each.
# One torch thread per job, so the two cores run two jobs at once (nothing here is timed, and every
# job of the run computes with the same thread count, so exactness is compared like with like).
TINY_OVERRIDE = {
    "runtime": {"threads": 1, "timed_job_cores": 1},  # nothing of this run's timings is read
    "prompts": {"contexts": [256, 512, 1024], "n_prompts": 2},
    "generation": {"repeats": 2, "warmup": 1},
    "serving": {
        "cache_ops": {"page_sizes": [16], "repeats": 1, "warmup": 0},
        "workloads": {
            "system_repeat": {"systems": 1, "system_len": 256, "questions": 4, "output_len": 4},
            "rag_fanout": {"questions": 4, "output_len": 4},
            "longctx": {"prompts": 2, "prompt_len": 512, "output_len": 4},
        },
        "run": {"workloads": ["system_repeat"], "arms": ["bcr", "radix"], "force_miss": [], "warmup": 0},
        "local": {"kv_tokens": 16384},
    },
    # Fewer sweep settings and a two-point frontier (every axis but retain holds the base's own
    # value, which the grid skips): the run's shape, not its breadth, is under test here.
    "tiered": {
        "sweep": {"settings": ["middle", "all_ret10_p1_n1", "all_ret0_p1_e05", "keep_all"]},
        "frontier": {
            "axes": {
                "retain": [0.0],
                "exceptions": [0.01],
                "exception_signal": ["reconstruction"],
                "exception_taper": [0.0],
                "phantoms_per_page": [1],
                "band": ["all"],
                "page_size": [16],
                "surprise_pages": [4],
            }
        },
    },
    # A broken peer interpreter: the run still finishes, every press row records why (the peers
    # tests run the real environment; tests/test_locks.py builds one from the locks).
    "peers": {"presses": ["snapkv", "streaming_llm"], "python": "broken-python"},
}
BROKEN_PYTHON = "#!/bin/sh\necho 'broken interpreter: no kvpress' >&2\nexit 3\n"


def snakemake(*args: str, cwd: Path, pythonpath: Path | None = None, check: bool = True):
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1500
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def planned_rules(dry_run_stdout: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal", dry_run_stdout, re.S)
    if not m:
        return {}
    rows = [line.split() for line in m.group(1).strip().splitlines()]
    return {r[0]: int(r[1]) for r in rows}


def repo_copy(tmp_path: Path) -> Path:
    """The repository as a fresh clone has it (tracked files, no results), to run commands in its root."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=IGNORE)
    return copy


def test_the_cluster_command_works_as_typed_in_the_repository_root(tmp_path):
    """`snakemake --profile slurm-a100 -n` in the root of a copy: GPU jobs get one A100 each, and the
    effective config is the study's alone (no key of the CPU default leaks into it)."""
    copy = repo_copy(tmp_path)
    out = snakemake("--profile", "slurm-a100", "-n", cwd=copy, pythonpath=copy).stdout
    jobs = re.split(r"\n\s*\n", out)
    gpu_rules, cpu_rules = set(), set()
    for block in jobs:
        m = re.search(r"^rule (\w+):", block.strip(), re.M)
        res = re.search(r"resources: (.*)", block)
        if not m or not res:
            continue
        has_gres = "gres=gpu:a100:1" in res.group(1)
        assert not (has_gres and re.search(r"\bgpu=|gpu_model=", res.group(1))), block
        (gpu_rules if has_gres else cpu_rules).add(m.group(1))
    assert {"dense_baseline", "model_card", "tiered_sweep", "serving_run", "longctx_correctness"} <= gpu_rules
    assert {"build_prompts", "build_site", "evaluate_claims", "cache_ops"} <= cpu_rules
    assert "results/prompts/distractor/32768.parquet" in out and "train_tiny_model" not in out

    effective = yaml.safe_load((copy / "results" / "run" / "config.yaml").read_text())
    study = yaml.safe_load((copy / "config" / "a100.yaml").read_text())
    assert effective == study


def test_layering_two_complete_configs_is_refused(tmp_path):
    copy = repo_copy(tmp_path)
    proc = snakemake(
        "-n", "--cores", "1", "--configfile", "config/config.yaml", "config/a100.yaml",
        cwd=copy, pythonpath=copy, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "a100.yaml is a complete config" in err and "config.yaml" in err
    assert not (copy / "results").exists()


def test_invalid_config_fails_before_any_job(tmp_path):
    bad = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    bad["prompts"]["contexts"] = [2048, -1]
    bad["model"]["dtype"] = 7
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(bad))
    work = tmp_path / "work"
    proc = snakemake(
        "--cores", "1", "--configfile", str(cfg), "--directory", str(work), cwd=REPO, check=False
    )
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "prompts.contexts[1]" in err and "model.dtype" in err and str(cfg) in err
    assert not (work / "results").exists()


@pytest.mark.workflow
def test_tiny_pipeline_end_to_end_and_code_hash_reruns(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=IGNORE)
    override = copy / "tiny.yaml"
    override.write_text(yaml.safe_dump(TINY_OVERRIDE))
    (copy / "broken-python").write_text(BROKEN_PYTHON)
    (copy / "broken-python").chmod(0o755)
    args = ("--cores", "2", "--configfile", "config/config.yaml", "tiny.yaml")
    snakemake(*args, cwd=copy, pythonpath=copy)

    results = copy / "results"
    assert (results / "site" / "index.html").is_file()
    assert (results / "site" / "baseline" / "index.html").is_file()
    for workload, c in itertools.product(("needle", "scattered"), (256, 512, 1024)):
        dense = pd.read_parquet(results / "dense" / workload / f"{c}.parquet")
        assert len(dense) == 2 and set(PROVENANCE_COLUMNS) <= set(dense.columns)
        assert (dense["workload"] == workload).all()
        assert dense["git_commit"].notna().all() and dense["peak_mem_bytes"].isna().all()
    assert not list(results.rglob(".*.tmp"))  # no temporary files left behind
    # the frontier: every model x family x mode, the whole grid, the model named in every row
    for model, workload, mode in itertools.product(
        ("tiny-needle", "tiny-gqa4"), ("needle", "scattered"), ("question_aware", "question_agnostic")
    ):
        f = pd.read_parquet(results / "tiered" / "frontier" / model / workload / f"{mode}.parquet")
        assert set(f["model"]) == {model} and set(f["query_mode"]) == {mode} and len(f) == 2 * 2
        assert (f.groupby("setting")["knob"].nunique() == 1).all()
        assert (results / "model" / model / "card.json").is_file()
    assert (results / "site" / "frontier" / "index.html").is_file()
    # peers: the broken interpreter is recorded in every press row (each prompt named), ours beside
    # them, the claim not yet decided with the reason, and the site says why
    peers = pd.read_parquet(results / "peers" / "kvpress.parquet")
    press_rows = peers[peers["press"] != "tiered"]
    assert set(press_rows["press"]) == {"snapkv", "streaming_llm"} and press_rows["prompt_id"].notna().all()
    assert press_rows["error"].str.contains("exit 3: broken interpreter").all()
    assert set(press_rows["workload"]) == {"needle", "scattered"} and set(press_rows["context"]) == {1024}
    assert (peers["press"] == "tiered").any() and peers.loc[peers["press"] == "tiered", "error"].isna().all()
    ledger = pd.read_parquet(results / "ledger.parquet")
    verdicts = ledger[ledger["claim"] == "peers_equal"]
    assert len(verdicts) and (verdicts["verdict"] == "not yet").all()
    assert verdicts["reason"].str.contains("broken interpreter").all()
    assert "broken interpreter" in (results / "site" / "peers" / "index.html").read_text()
    freeze = {e: (results / "run" / "freeze" / f"{e}.txt").read_text() for e in ("main", "peers")}
    assert "torch==2.14.1" in freeze["main"] and freeze["peers"].startswith("# not available: ")
    provenance = (results / "site" / "provenance" / "index.html").read_text()
    assert "requirements/lock/main.txt" in provenance and "broken interpreter" in provenance
    # serving: both arms behind the local engine, equal reuse, a summary and the long-context check
    for workload in ("system_repeat",):
        arms = {
            a: pd.read_parquet(results / "serving" / "local" / workload / f"{a}.parquet")
            for a in ("bcr", "radix")
        }
        assert all(len(df) == 4 and df["error"].isna().all() for df in arms.values())
        assert arms["bcr"]["cached_tokens"].sum() == arms["radix"]["cached_tokens"].sum() > 0
    summary = pd.read_parquet(results / "serving" / "summary.parquet")
    assert set(summary["workload"]) == {"system_repeat"} and (summary["cached_delta"] == 0).all()
    longctx = pd.read_parquet(results / "correctness" / "longctx.parquet")
    assert len(longctx) == 2 and longctx["exact"].all() and (longctx["cached_tokens_bcr"] > 0).all()
    assert (results / "site" / "serving" / "index.html").is_file()

    # Nothing to do on a second invocation.
    assert planned_rules(snakemake(*args, "-n", cwd=copy, pythonpath=copy).stdout) == {}

    def touch(module: str) -> dict[str, int]:
        """The dry-run plan after appending a comment to ``bcr/<module>`` (restored afterwards)."""
        path = copy / "bcr" / module
        original = path.read_text()
        path.write_text(original + "\n# touched by the workflow test\n")
        try:
            return planned_rules(snakemake(*args, "-n", cwd=copy, pythonpath=copy).stdout)
        finally:
            path.write_text(original)

    # Page rendering is reached by `bcr site build` only; the claim rules by the ledger too.
    assert set(touch("ledger/render.py")) == {"build_site", "all"}
    assert set(touch("ledger/rules.py")) == {"evaluate_claims", "build_site", "all"}
    # The cache benchmark's modules rerun it (and the site), nothing of the model or tiered tracks.
    assert set(touch("prefix/chain.py")) == {
        "cache_ops", "serving_run", "longctx_correctness", "serving_summary", "evaluate_claims", "build_site", "all",
    }  # fmt: skip
    # The client is the serving runs' alone: not the cache benchmark's.
    assert set(touch("serving/client.py")) == {
        "serving_run", "longctx_correctness", "serving_summary", "evaluate_claims", "build_site", "all",
    }  # fmt: skip

    # Editing the dense baseline reruns it for every family and context, not the prompts or the model.
    plan = touch("dense.py")
    assert plan.get("dense_baseline") == 6, plan
    assert "build_prompts" not in plan and "train_tiny_model" not in plan and "model_card" not in plan
    assert "cache_ops" not in plan
    # The CLI bodies of the model, prompt and dense commands are in their rules' hashes.
    plan = touch("commands.py")
    assert plan.get("build_prompts") == 6 and plan.get("dense_baseline") == 6 and "model_card" in plan, plan
    assert "cache_ops" not in plan

    # `make run` survives a failed job: the cache benchmark made to fail (a `bcr` that refuses
    # `prefix bench` first on PATH), the run keeps going, builds the ledger and the site from what
    # exists, names the failed job with its log tail, and exits non-zero.
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "bcr").write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "prefix bench" ]; then echo "injected failure: no cache benchmark" >&2; exit 7; fi\n'
        f'exec {BIN / "bcr"} "$@"\n'
    )
    (fake / "bcr").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{BIN}:{os.environ['PATH']}", PYTHONPATH=str(copy), CORES="2")
    proc = subprocess.run(
        ["bash", "scripts/run.sh", *args[2:], "--forcerun", "cache_ops"],
        cwd=copy, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    last = proc.stdout.strip().splitlines()[-2:]
    assert "results/site/index.html" in last[0] and "make serve" in last[0], last
    assert "FAILED" in last[1] and "cache_ops" in last[1], last
    failed = yaml.safe_load((results / "run" / "failed_jobs.json").read_text())["jobs"]
    assert [j["rule"] for j in failed] == ["cache_ops"] and "injected failure" in failed[0]["tail"]
    assert not (results / "serving" / "cache_ops.parquet").exists()
    index = (results / "site" / "index.html").read_text()
    assert "This run lost 1 job" in index and "injected failure: no cache benchmark" in index
    ledger = pd.read_parquet(results / "ledger.parquet")
    assert (ledger.loc[ledger["claim"] == "bcr_cache_ops_cheap", "verdict"] == "not yet").all()
