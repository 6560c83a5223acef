"""The GPU check's scale stage, rehearsed on the CPU: the same script and code path a CUDA machine
runs (random weights at a small shape), so the one command that needs a GPU is not first run there."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from bcr import io


def test_scale_stage_writes_every_arm_and_prints_its_table_last(repo, tmp_path):
    out = tmp_path / "gpu_check"
    cmd = [
        sys.executable, str(repo / "scripts" / "gpu_check.py"), "--only", "scale", "--device", "cpu",
        "--scale-shape", "small", "--scale-contexts", "256", "512", "--scale-repeats", "1",
        "--scale-new-tokens", "8", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = io.read_parquet(out / "scale.parquet")
    assert sorted(set(rows["context"])) == [256, 512]
    assert set(rows["decode_path"]) == {"dense", "dense_static", "densify", "paged"}
    assert (rows["ttft_s"] > 0).all() and (rows["tpot_s"] > 0).all()
    dense = rows[rows["decode_path"] == "dense"]
    assert (dense["ttft_ratio"] == 1.0).all() and dense["tokens_equal_dense"].all()
    tiered = rows[rows["decode_path"].isin(["densify", "paged"])]
    assert (tiered["stored_fraction"] < 1).all()  # front_ret25 really compresses the front band
    assert (tiered["kv_bytes_stored"] < dense["kv_bytes_stored"].max()).all()
    phases = io.read_parquet(out / "scale_decomposition.parquet")
    for _, g in phases.groupby(["context", "decode_path"]):
        assert g["seconds"].sum() == pytest.approx(g["total_s"].iloc[0], rel=1e-9)
    rebuild = phases[phases["phase"] == "view_rebuild"].set_index(["context", "decode_path"])["seconds"]
    assert (rebuild.xs("paged", level=1) == 0).all() and (rebuild.xs("densify", level=1) > 0).all()
    tail = proc.stdout.strip().splitlines()
    last = max(i for i, line in enumerate(tail) if line.startswith("== scale: small"))
    assert "saving_realised" in tail[last + 1] and tail[-1].startswith("gpu_check passed")
    assert len(pd.read_csv(out / "scale.csv")) == len(rows)
