"""Plots are deterministic SVG: same data → same bytes (also across processes); other data → other bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from bcr.ledger import plots

PROMOTION = pd.DataFrame(
    {
        "setting": ["front_ret25", "front_ret25", "middle_phantom8"],
        "context": [4096, 8192, 8192],
        "decode_path": ["densify"] * 3,
        "n": [8, 8, 8],
        "n_exact": [8, 8, 7],
        "compression": [2.26, 2.27, 1.59],
        "ttft_ratio": [1.27, 2.23, 1.26],
        "tpot_ratio": [1.19, 2.21, 1.00],
    }
)
REFERENCE = {"promotion": {"rows": [{"compression": 2.2723, "exact": 4, "n": 4}]}}

SCRIPT = """
import sys
from pathlib import Path
import pandas as pd
from bcr.ledger import plots
df = pd.read_json(sys.argv[1])
plots.compression_vs_exactness(df, df.iloc[0:0], {ref!r}, Path(sys.argv[2]))
"""


def test_same_data_same_bytes(tmp_path):
    a = plots.compression_vs_exactness(PROMOTION, PROMOTION.iloc[0:0], REFERENCE, tmp_path / "a.svg")
    b = plots.compression_vs_exactness(PROMOTION, PROMOTION.iloc[0:0], REFERENCE, tmp_path / "b.svg")
    data = a.read_bytes()
    assert data == b.read_bytes()
    assert data.startswith(b"<?xml")
    assert b"<dc:date>" not in data  # no build date in the metadata


def test_same_bytes_in_a_fresh_process(tmp_path):
    here = plots.compression_vs_exactness(PROMOTION, PROMOTION.iloc[0:0], REFERENCE, tmp_path / "here.svg")
    src = tmp_path / "promotion.json"
    PROMOTION.to_json(src)
    there = tmp_path / "there.svg"
    subprocess.run(
        [sys.executable, "-c", SCRIPT.format(ref=REFERENCE), str(src), str(there)], check=True, cwd=Path.cwd()
    )
    assert here.read_bytes() == there.read_bytes()


def test_different_data_different_bytes(tmp_path):
    changed = PROMOTION.copy()
    changed.loc[2, "n_exact"] = 8
    a = plots.compression_vs_exactness(PROMOTION, PROMOTION.iloc[0:0], REFERENCE, tmp_path / "a.svg")
    b = plots.compression_vs_exactness(changed, changed.iloc[0:0], REFERENCE, tmp_path / "b.svg")
    assert a.read_bytes() != b.read_bytes()


def test_every_plot_kind_is_deterministic(tmp_path):
    ops = pd.DataFrame(
        [
            {
                "arm": arm,
                "workload": w,
                "page_size": 16,
                "op": op,
                "n": 100,
                "us_p50": 10.0 + i,
                "us_p99": 30.0,
            }
            for i, arm in enumerate(["bcr", "unified_rust"])
            for w in ["system_repeat", "rag_fanout"]
            for op in ["match", "insert"]
        ]
    )
    serving = pd.DataFrame(
        {
            "engine": "sglang",
            "workload": "rag_fanout",
            "arm": ["bcr"] * 5 + ["radix"] * 5,
            "ttft_s": [0.05, 0.06, 0.07, 0.05, 0.08, 0.04, 0.05, 0.06, 0.05, 0.07],
        }
    )
    decomp = pd.DataFrame(
        {
            "setting": "front_ret25",
            "context": 8192,
            "decode_path": ["densify", "densify", "paged", "paged"],
            "phase": ["forward", "view_rebuild", "forward", "view_rebuild"],
            "seconds": [0.002, 0.004, 0.002, 0.0],
        }
    )
    for name, fn in {
        "ops": lambda p: plots.cache_ops_bars(ops, 16, p),
        "ttft": lambda p: plots.ttft_distributions(serving, p),
        "decomp": lambda p: plots.decomposition_bars(decomp, p),
        "ratios": lambda p: plots.ratio_bars(PROMOTION, p),
    }.items():
        assert fn(tmp_path / f"{name}1.svg").read_bytes() == fn(tmp_path / f"{name}2.svg").read_bytes(), name
