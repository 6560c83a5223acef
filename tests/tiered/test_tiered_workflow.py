"""The sweep checkpoint decides which promotion jobs exist (real snakemake, real `bcr tiered promote`).

Upstream files (model, prompts, dense) are stand-ins older than the sweep results, so snakemake runs
only the checkpoint; the sweep rows are written by hand with chosen exactness.  Flipping one setting's
exactness and rerunning the checkpoint must change the planned promotion jobs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bcr.contracts import TIERED_COLUMNS

pytestmark = pytest.mark.workflow


def _rows(setting: str, context: int, exact: bool) -> pd.DataFrame:
    rows = []
    for i in range(2):
        for path in ("dense", "densify"):
            ok = exact or path == "dense" or i == 0
            row = {c: None for c in TIERED_COLUMNS}
            row.update(
                setting=setting,
                context=context,
                prompt_id=f"c{context}-p{i:03d}",
                decode_path=path,
                exact=ok,
                exact_answer=ok,
                degenerate=False,
                first_divergence=None if ok else 3,
                max_logit_diff=0.0,
                answer_correct=ok,
                logical_tokens=100,
                stored_tokens=100 if path == "dense" else 50,
                compression=1.0 if path == "dense" else 2.0,
                stored_fraction=1.0 if path == "dense" else 0.5,
                ttft_s=0.1,
                tpot_s=0.01,
                ttft_ratio=1.0,
                tpot_ratio=1.0,
                kv_bytes_stored=1000,
                kv_bytes_peak=1200,
                peak_mem_bytes=None,
            )
            row["lost"] = None if ok else "needle page(s) phantom: layer 1 pages [7]"
            row["device"] = "cpu:test"
            rows.append(row)
    df = pd.DataFrame(rows)
    df["first_divergence"] = df["first_divergence"].astype("Int64")
    df["peak_mem_bytes"] = df["peak_mem_bytes"].astype("Int64")
    return df


def _snakemake(repo: Path, work: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(repo / "Snakefile"),
        "--directory",
        str(work),
        "--cores",
        "1",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _planned_promotions(repo: Path, work: Path) -> set[tuple[int, str]]:
    out = _snakemake(repo, work, "-n", "results/tiered/promotion_summary.parquet")
    return {(int(c), s) for c, s in re.findall(r"results/tiered/promotion/(\d+)/([\w.-]+)\.parquet", out)}


def test_checkpoint_output_decides_promotion_jobs(tmp_path, repo, default_config):
    work = tmp_path
    model = work / "model"
    model.mkdir()
    for f in ("model.safetensors", "config.json"):
        (model / f).write_text("stand-in\n")
    config = default_config
    config["model"]["path"] = str(model)
    (work / "config").mkdir()
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run_cfg = work / "results" / "run" / "config.yaml"
    run_cfg.parent.mkdir(parents=True)
    run_cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    contexts = config["prompts"]["contexts"]
    for c in contexts:
        for d in ("prompts", "dense"):
            p = work / "results" / d / f"{c}.parquet"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("stand-in\n")
    time.sleep(1.1)
    sweep = config["tiered"]["sweep"]["settings"]
    exact = {s: s in ("front_ret25", "middle_phantom8", "keep_all") for s in sweep}
    sweep_dir = work / "results" / "tiered" / "sweep"
    sweep_dir.mkdir(parents=True)
    for s in sweep:
        _rows(s, contexts[0], exact[s]).to_parquet(sweep_dir / f"{s}.parquet")

    _snakemake(repo, work, "results/tiered/promoted.json")
    first = _planned_promotions(repo, work)
    assert first == {(c, s) for c in contexts[1:] for s in ("front_ret25", "middle_phantom8")}

    # middle_phantom8 stops being exact: the checkpoint reruns and its promotion jobs disappear.
    time.sleep(1.1)
    _rows("middle_phantom8", contexts[0], False).to_parquet(sweep_dir / "middle_phantom8.parquet")
    _snakemake(repo, work, "results/tiered/promoted.json")
    second = _planned_promotions(repo, work)
    assert second == {(c, "front_ret25") for c in contexts[1:]}
    summary = pd.read_parquet(work / "results" / "tiered" / "sweep_summary.parquet")
    assert set(summary.loc[summary["promoted"], "setting"]) == {"front_ret25"}
    assert "layer 1 pages [7]" in summary.set_index("setting").loc["middle", "first_failure"]
