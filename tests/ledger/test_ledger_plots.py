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
            "query_mode": "question_aware",
            "context": 8192,
            "setting": ["dense", "front_ret25", "front_ret25"],
            "decode_path": ["dense", "densify", "paged"],
            "prefill_forward_ms": [20.0, 20.0, 20.0],
            "view_rebuild_ms": [0.0, 4.0, 0.0],
            "decode_attention_ms": [1.0, 1.2, 0.8],
        }
    )
    for name, fn in {
        "ops": lambda p: plots.cache_ops_bars(ops, 16, p),
        "ttft": lambda p: plots.ttft_distributions(serving, p),
        "decomp": lambda p: plots.decomposition_bars(decomp, p),
        "ratios": lambda p: plots.ratio_bars(PROMOTION, p),
    }.items():
        assert fn(tmp_path / f"{name}1.svg").read_bytes() == fn(tmp_path / f"{name}2.svg").read_bytes(), name


def test_the_overlap_check_sees_overlapping_labels(tmp_path):
    import matplotlib.pyplot as plt
    import pytest

    from bcr.ledger import plotstyle

    with plotstyle.style():
        fig, ax = plt.subplots()
        ax.annotate("front_ret25", (1.0, 1.0))
        ax.annotate("middle_ret35", (1.0, 1.0))
        with pytest.warns(plotstyle.OverlappingLabels):
            plotstyle.save(fig, tmp_path / "clash.svg")


def test_site_plots_have_no_overlapping_labels_and_label_their_lines(full_site, recwarn):
    """The full synthetic site drew every plot without an overlap warning; lines and the note are labelled."""
    from bcr.ledger import plotstyle

    assert not [w for w in recwarn if issubclass(w.category, plotstyle.OverlappingLabels)]
    plots = full_site / "site" / "plots"
    comp = (plots / "compression_vs_exactness_needle_question_aware.svg").read_text()
    assert "<!-- claim threshold C = 2 -->" in comp
    assert "<!-- the note (reference), 16384 -->" in comp and "<!-- the note (reference), 32768 -->" in comp
    assert "the note's 32768" in comp  # our contexts name the note's they stand in for
    lat = (plots / "latency_ratios_needle_question_aware.svg").read_text()
    assert "<!-- dense = 1 (no slowdown) -->" in lat and "same setting at the note's context" in lat
    ops = (plots / "cache_ops.svg").read_text()
    assert "×10" not in ops and "10^" not in ops  # plain log ticks


def test_plots_with_intervals_are_deterministic_and_show_the_bars(tmp_path):
    df = PROMOTION.assign(
        compression_low=PROMOTION["compression"] * 0.98,
        compression_high=PROMOTION["compression"] * 1.02,
        ttft_ratio_low=PROMOTION["ttft_ratio"] * 0.9,
        ttft_ratio_high=PROMOTION["ttft_ratio"] * 1.1,
    )
    a = plots.latency_ratios(df, REFERENCE, tmp_path / "a.svg", note_ctx={4096: 16384, 8192: 32768})
    b = plots.latency_ratios(df, REFERENCE, tmp_path / "b.svg", note_ctx={4096: 16384, 8192: 32768})
    assert a.read_bytes() == b.read_bytes()
    bare = plots.latency_ratios(PROMOTION, REFERENCE, tmp_path / "c.svg")
    assert bare.read_bytes() != a.read_bytes()  # the interval bars are drawn


def test_frontier_plot_is_deterministic_and_follows_its_rows(tmp_path):
    import ledger_synth as synth

    from bcr.ledger import tables

    rows = pd.concat(
        [
            pd.read_parquet(synth.write_frontier(tmp_path / "r", "m", w, "question_aware"))
            for w in ("needle", "scattered")
        ]
    )
    table = tables.frontier_table(rows)
    stars = pd.DataFrame(
        {"model": ["m"], "workload": ["needle"], "query_mode": ["question_aware"], "setting": ["middle"],
         "n": [8], "n_exact": [8], "stored_fraction": [0.62]}
    )  # fmt: skip
    a = plots.frontier(table, "m", tmp_path / "a.svg", promoted=stars, note_fraction=0.44)
    b = plots.frontier(table, "m", tmp_path / "b.svg", promoted=stars, note_fraction=0.44)
    assert a.read_bytes() == b.read_bytes()
    assert b"front_ret25 (0.44)" in a.read_bytes() and b"promoted" in a.read_bytes()
    table.loc[0, "n_exact"] -= 1
    c = plots.frontier(table, "m", tmp_path / "c.svg", promoted=stars, note_fraction=0.44)
    assert c.read_bytes() != a.read_bytes()


def test_every_decomposition_phase_has_its_own_colour():
    """The stacked bars colour phases by position: two phases sharing a colour would read as one."""
    from bcr.contracts import DECOMPOSITION_PHASES
    from bcr.ledger import plotstyle

    colours = [plotstyle.color(i) for i in range(len(DECOMPOSITION_PHASES))]
    assert len(set(colours)) == len(colours)
