"""Promotion decision and summary tables from hand-made rows."""

from __future__ import annotations

import pandas as pd
import pytest

from bcr.tiered.sweep import (
    PROMOTION_SUMMARY_COLUMNS,
    SWEEP_SUMMARY_COLUMNS,
    ControlFailedError,
    promote,
    promotion_summary,
    sweep_summary,
)


def _rows(setting, context, exact_per_prompt, peak=None):
    rows = []
    for i, ok in enumerate(exact_per_prompt):
        for path in ("dense", "densify"):
            tiered = path != "dense"
            rows.append(
                {
                    "setting": setting,
                    "workload": "needle",
                    "query_mode": "question_aware",
                    "context": context,
                    "prompt_id": f"p{i}",
                    "decode_path": path,
                    "exact": ok or not tiered,
                    "first_divergence": None if ok or not tiered else 2,
                    "compression": 2.0 if tiered else 1.0,
                    "stored_fraction": 0.5 if tiered else 1.0,
                    "ttft_ratio": 1.5 + i if tiered else 1.0,
                    "tpot_ratio": 1.2 if tiered else 1.0,
                    "kv_bytes_peak": 900 if tiered else 1000,
                    "peak_mem_bytes": None if peak is None else (peak - 10 if tiered else peak),
                    "lost": None if ok or not tiered else "needle page(s) phantom: layer 1 pages [3]",
                }
            )
    return pd.DataFrame(rows)


def test_promote_only_settings_exact_on_every_prompt_and_never_controls():
    rows = pd.concat(
        [
            _rows("a", 2048, [True, True]),
            _rows("b", 2048, [True, False]),
            _rows("keep_all", 2048, [True, True]),
        ]
    )
    d = promote(rows, ["a", "b", "keep_all"], ["keep_all"], None)
    assert d["promoted"] == ["a"] and d["run"] == ["a"] and d["source"] == "sweep"
    assert d["most_compressed"] == "a"
    assert promote(rows, ["b", "keep_all"], ["keep_all"], None)["most_compressed"] is None  # nothing runs
    assert d["not_promoted"] == ["b"] and d["controls"] == {"keep_all": True}
    s = sweep_summary(rows, ["keep_all"], d["promoted"])
    assert list(s.columns) == SWEEP_SUMMARY_COLUMNS
    b = s.set_index("setting").loc["b"]
    assert b["exactness"] == "1/2" and not b["exact"] and "layer 1 pages [3]" in b["first_failure"]


def test_override_replaces_the_list_but_the_decision_is_still_recorded():
    rows = pd.concat([_rows("a", 2048, [True]), _rows("b", 2048, [False]), _rows("keep_all", 2048, [True])])
    d = promote(rows, ["a", "b", "keep_all"], ["keep_all"], ["b"])
    assert d["promoted"] == ["a"] and d["run"] == ["b"] and d["source"] == "override"


def test_max_settings_promotes_the_most_compressing_exact_settings():
    def with_compression(df, c):
        df.loc[df["decode_path"] != "dense", "compression"] = c
        return df

    rows = pd.concat(
        [
            with_compression(_rows("a", 2048, [True, True]), 1.5),
            with_compression(_rows("b", 2048, [True, True]), 1.9),
            with_compression(_rows("c", 2048, [True, False]), 3.0),  # most compressing, but not exact
            with_compression(_rows("d", 2048, [True, True]), 1.7),
            _rows("keep_all", 2048, [True, True]),
        ]
    )
    d = promote(rows, ["a", "b", "c", "d", "keep_all"], ["keep_all"], None, max_settings=2)
    assert d["promoted"] == ["b", "d"] and d["run"] == ["b", "d"]  # in sweep order
    assert d["held_back"] == ["a"] and d["not_promoted"] == ["c"] and d["max_settings"] == 2
    # the controls are matched to the promoted setting storing the least, not to the least exact one
    assert d["most_compressed"] == "b"
    assert promote(rows, ["a", "b", "c", "d", "keep_all"], ["keep_all"], ["a", "c"])["most_compressed"] == "c"
    # Exactness still decides first: a cap larger than the exact set promotes every exact setting.
    uncapped = promote(rows, ["a", "b", "c", "d", "keep_all"], ["keep_all"], None, 10)
    assert uncapped["promoted"] == ["a", "b", "d"] and uncapped["held_back"] == []
    assert sweep_summary(rows, ["keep_all"], d["promoted"]).set_index("setting")["promoted"].to_dict() == {
        "a": False, "b": True, "c": False, "d": True, "keep_all": False,
    }  # fmt: skip


def test_a_failing_control_stops_the_promotion():
    rows = pd.concat([_rows("a", 2048, [True]), _rows("keep_all", 2048, [True, False])])
    with pytest.raises(ControlFailedError, match="keep_all"):
        promote(rows, ["a", "keep_all"], ["keep_all"], None)


def test_promotion_summary_has_the_note_columns():
    rows = pd.concat([_rows("a", 4096, [True, True], peak=1000), _rows("a", 8192, [True, False])])
    s = promotion_summary(rows)
    assert list(s.columns) == PROMOTION_SUMMARY_COLUMNS
    r4 = s[s["context"] == 4096].iloc[0]
    assert r4["exactness"] == "2/2" and r4["compression"] == 2.0 and r4["ttft_ratio"] == 2.0
    assert r4["dense_peak_mem_bytes"] == 1000 and r4["tiered_peak_mem_bytes"] == 990
    assert r4["delta_vram_pct"] == pytest.approx(1.0) and r4["delta_kv_peak_pct"] == pytest.approx(10.0)
    r8 = s[s["context"] == 8192].iloc[0]
    assert r8["exactness"] == "1/2" and pd.isna(r8["dense_peak_mem_bytes"]) and pd.isna(r8["delta_vram_pct"])
    assert promotion_summary(rows.iloc[0:0]).empty


def test_promotion_decides_on_the_answer_span_and_checks_controls_on_the_whole_trajectory():
    """A setting whose answers are exact but whose long continuation flips is promoted (the note's claim
    is about the answer); a control that keeps everything must reproduce every token, or the harness is
    broken."""
    answers_ok = _rows("middle", 2048, [False, False]).assign(
        exact_answer=True, degenerate=[False, False] * 2
    )
    keep_all = _rows("keep_all", 2048, [True, True]).assign(exact_answer=True, degenerate=True)
    decision = promote(pd.concat([answers_ok, keep_all]), ["middle", "keep_all"], ["keep_all"], None)
    assert decision["promoted"] == ["middle"]
    summary = sweep_summary(pd.concat([answers_ok, keep_all]), ["keep_all"], ["middle"]).set_index("setting")
    assert summary.loc["middle", "n_exact"] == 2 and summary.loc["middle", "n_exact_trajectory"] == 0
    assert summary.loc["keep_all", "n_degenerate"] == 2

    bad_control = _rows("keep_all", 2048, [True, False]).assign(exact_answer=True)
    with pytest.raises(ControlFailedError):
        promote(pd.concat([answers_ok, bad_control]), ["middle", "keep_all"], ["keep_all"], None)
