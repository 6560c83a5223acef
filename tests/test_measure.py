"""The shared measuring loop: rotating order, unrecorded warm-up, the determinism gate."""

from __future__ import annotations

import pytest

from bcr.measure import DeterminismError, check_repeats, interleaved, rotated


def test_rounds_rotate_so_no_arm_always_runs_first():
    calls: list[str] = []
    arms = {name: (lambda name=name: calls.append(name) or len(calls)) for name in ("dense", "densify")}
    out = interleaved(arms, repeats=4, warmup=1)
    assert calls == ["dense", "densify"] + ["dense", "densify", "densify", "dense"] * 2
    assert [len(v) for v in out.values()] == [4, 4]
    assert out["dense"] == [3, 6, 7, 10]  # warm-up results are not recorded
    assert rotated(["a", "b", "c"], 4) == ["b", "c", "a"]


def test_the_gate_names_the_prompt_and_what_differed():
    check_repeats([[1, 2], [1, 2]], "dense", "p0")
    with pytest.raises(DeterminismError, match=r"prompt p3: tiered \(x\) greedy outputs differ"):
        check_repeats([[1, 2], [1, 3]], "tiered (x)", "p3")
