"""The workflow itself: profile discovery, config errors before any job, a real tiny end-to-end run,
and code-hash rerun triggers.  The end-to-end run uses a copy of the repository in a temp dir so
that touching code there cannot disturb the checkout under test."""

from __future__ import annotations

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
IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "results", "logs", ".snakemake", "__pycache__", ".*_cache", "*.egg-info"
)

# The tiny end-to-end run: three short contexts (sweep + two promotion contexts), two prompts each.
TINY_OVERRIDE = {
    "prompts": {"contexts": [256, 512, 1024], "n_prompts": 2},
    "generation": {"repeats": 2, "warmup": 1},
    "serving": {"cache_ops": {"page_sizes": [16], "repeats": 1, "warmup": 0}},
}


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


def test_profile_is_found_from_repo_root_and_requests_one_a100(tmp_path):
    proc = snakemake("--profile", "slurm-a100", "-n", "--directory", str(tmp_path), cwd=REPO)
    out = proc.stdout
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
    assert "dense_baseline" in gpu_rules and "model_card" in gpu_rules
    assert "build_prompts" in cpu_rules and "build_site" in cpu_rules
    assert "results/prompts/32768.parquet" in out


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
    args = ("--cores", "2", "--configfile", "config/config.yaml", "tiny.yaml")
    snakemake(*args, cwd=copy, pythonpath=copy)

    results = copy / "results"
    assert (results / "site" / "index.html").is_file()
    assert (results / "site" / "baseline" / "index.html").is_file()
    for c in (256, 512, 1024):
        dense = pd.read_parquet(results / "dense" / f"{c}.parquet")
        assert len(dense) == 2 and set(PROVENANCE_COLUMNS) <= set(dense.columns)
        assert dense["git_commit"].notna().all() and dense["peak_mem_bytes"].isna().all()
    assert not list(results.rglob(".*.tmp"))  # no temporary files left behind

    # Nothing to do on a second invocation.
    assert planned_rules(snakemake(*args, "-n", cwd=copy, pythonpath=copy).stdout) == {}

    # Editing the ledger reruns only the ledger and the site.
    with open(copy / "bcr" / "ledger" / "render.py", "a") as fh:
        fh.write("\n# touched by the workflow test\n")
    plan = planned_rules(snakemake(*args, "-n", cwd=copy, pythonpath=copy).stdout)
    assert set(plan) == {"evaluate_claims", "build_site", "all"}, plan

    # Editing the dense baseline reruns it for every context, not the prompts or the model.
    with open(copy / "bcr" / "dense.py", "a") as fh:
        fh.write("\n# touched by the workflow test\n")
    plan = planned_rules(snakemake(*args, "-n", cwd=copy, pythonpath=copy).stdout)
    assert plan.get("dense_baseline") == 3, plan
    assert "build_prompts" not in plan and "train_tiny_model" not in plan and "model_card" not in plan
