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


def _rows(setting: str, context: int, exact: bool, mode: str = "question_aware") -> pd.DataFrame:
    rows = []
    for i in range(2):
        for path in ("dense", "densify"):
            ok = exact or path == "dense" or i == 0
            row = {c: None for c in TIERED_COLUMNS}
            row.update(
                setting=setting,
                workload="needle",
                query_mode=mode,
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


def _planned_promotions(repo: Path, work: Path) -> set[tuple[str, int]]:
    """The promotion jobs the dry run plans, as (mode, context)."""
    targets = [f"results/tiered/needle/promotion_summary/{m}.parquet" for m in MODES]
    out = _snakemake(repo, work, "-n", *targets)
    found = re.findall(r"results/tiered/needle/promotion/(\w+)/(\d+)\.parquet", out)
    return {(m, int(c)) for m, c in found}


MODES = ("question_aware", "question_agnostic")


def _write_sweep(path: Path, config: dict, exact: dict[str, bool], mode: str) -> None:
    sweep = config["tiered"]["sweep"]["settings"]
    context = config["prompts"]["contexts"][0]
    pd.concat([_rows(s, context, exact[s], mode) for s in sweep], ignore_index=True).to_parquet(path)


def test_checkpoint_output_decides_promotion_jobs(tmp_path, repo, default_config):
    """Per mode: promotion jobs exist only where the checkpoint promoted something, and the list it
    promoted follows the sweep rows."""
    import json

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
            p = work / "results" / d / "needle" / f"{c}.parquet"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("stand-in\n")
    time.sleep(1.1)
    sweep = config["tiered"]["sweep"]["settings"]
    exact = {s: s in ("front_ret25", "middle_phantom8", "keep_all") for s in sweep}
    nothing = {s: s == "keep_all" for s in sweep}  # only the control is exact: nothing is promoted
    sweep_dir = work / "results" / "tiered" / "needle" / "sweep"
    sweep_dir.mkdir(parents=True)
    _write_sweep(sweep_dir / "question_aware.parquet", config, exact, "question_aware")
    _write_sweep(sweep_dir / "question_agnostic.parquet", config, nothing, "question_agnostic")

    promoted = [f"results/tiered/needle/promoted/{m}.json" for m in MODES]
    _snakemake(repo, work, *promoted)
    first = _planned_promotions(repo, work)
    assert first == {("question_aware", c) for c in contexts[1:]}
    aware = json.loads((work / promoted[0]).read_text())
    assert aware["run"] == ["middle_phantom8", "front_ret25"] or set(aware["run"]) == {
        "front_ret25",
        "middle_phantom8",
    }
    assert aware["query_mode"] == "question_aware"
    assert json.loads((work / promoted[1]).read_text())["run"] == []

    # middle_phantom8 stops being exact: the checkpoint reruns and promotes front_ret25 only; the
    # agnostic sweep gains an exact setting and its promotion jobs appear.
    time.sleep(1.1)
    exact["middle_phantom8"] = False
    _write_sweep(sweep_dir / "question_aware.parquet", config, exact, "question_aware")
    _write_sweep(sweep_dir / "question_agnostic.parquet", config, exact, "question_agnostic")
    _snakemake(repo, work, *promoted)
    assert _planned_promotions(repo, work) == {(m, c) for m in MODES for c in contexts[1:]}
    assert json.loads((work / promoted[0]).read_text())["run"] == ["front_ret25"]
    summary = pd.read_parquet(
        work / "results" / "tiered" / "needle" / "sweep_summary" / "question_aware.parquet"
    )
    assert set(summary.loc[summary["promoted"], "setting"]) == {"front_ret25"}
    assert "layer 1 pages [7]" in summary.set_index("setting").loc["middle", "first_failure"]
