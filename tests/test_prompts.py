"""Prompt sets: deterministic, exactly sized, the needle where the columns say it is."""

from __future__ import annotations

import numpy as np
import pytest

from bcr import prompts

SPEC = prompts.NeedleSpec(vocab_size=256, key_len=2, value_len=6)


def test_prompt_set_is_deterministic_and_sized():
    a = prompts.synthetic_prompt_set(512, 4, seed=7, spec=SPEC)
    b = prompts.synthetic_prompt_set(512, 4, seed=7, spec=SPEC)
    c = prompts.synthetic_prompt_set(512, 4, seed=8, spec=SPEC)
    assert a.equals(b)
    assert not a["input_ids"].map(tuple).equals(c["input_ids"].map(tuple))
    assert all(len(ids) == 512 for ids in a["input_ids"])
    assert a["depth"].tolist() == [0.125, 0.375, 0.625, 0.875]


def test_needle_columns_locate_the_answer():
    df = prompts.synthetic_prompt_set(1024, 5, seed=1, spec=SPEC)
    for row in df.to_dict("records"):
        ids = np.asarray(row["input_ids"])
        needle = ids[row["needle_start"] : row["needle_end"]]
        assert needle[0] == prompts.KEY and needle[1 + SPEC.key_len] == prompts.VAL
        value = needle[2 + SPEC.key_len :].tolist()
        assert row["answer_ids"] == [*value, prompts.EOS]
        # the query at the end repeats the needle's key
        assert ids[-SPEC.query_len :].tolist() == [prompts.QUERY, *needle[1 : 1 + SPEC.key_len], prompts.VAL]
        # the question starts at its QUERY marker: everything before it is context
        assert (
            ids[row["question_start"]] == prompts.QUERY and row["question_start"] == len(ids) - SPEC.query_len
        )
        # filler never contains control or value tokens: the needle is the only KEY marker and the
        # value can only be found where the needle put it
        assert (ids == prompts.KEY).sum() == 1
        assert all(v >= SPEC.value_start for v in value)
        outside = np.delete(ids, np.arange(row["needle_start"], row["needle_end"]))
        assert (outside < SPEC.value_start).all()


def test_answer_correct_requires_exact_prefix():
    row = prompts.synthetic_prompt_set(256, 1, seed=0, spec=SPEC).iloc[0]
    ans = list(row["answer_ids"])
    assert prompts.answer_correct([*ans, 9, 9], row)
    assert not prompts.answer_correct([ans[0] + 1, *ans[1:]], row)
    assert not prompts.answer_correct(ans[:-1], row)


def test_context_too_short_is_an_error():
    with pytest.raises(ValueError, match="shorter than the needle"):
        prompts.synthetic_example(np.random.default_rng(0), 8, SPEC)


def test_answer_span_is_the_value_and_eos():
    row = prompts.synthetic_prompt_set(256, 1, seed=0, spec=SPEC).iloc[0]
    ans = list(row["answer_ids"])
    assert prompts.answer_span([*ans, 7, 7, 7], row) == len(ans)
    assert prompts.answer_span(ans[:3], row) == 3  # a short trajectory: all of it


# --- the scattered family: the answer's tokens over several far-apart pages -------------------------


def test_scattered_values_sit_alone_where_the_row_says_and_the_needle_family_is_unchanged():
    needle = prompts.synthetic_prompt_set(2048, 4, seed=1, spec=SPEC)
    again = prompts.synthetic_prompt_set(2048, 4, seed=1, spec=SPEC, workload="needle")
    assert needle.equals(again) and (needle["workload"] == "needle").all()
    df = prompts.synthetic_prompt_set(2048, 4, seed=1, spec=SPEC, workload="scattered")
    assert (df["workload"] == "scattered").all() and df["prompt_id"].str.contains("-scattered-").all()
    for row in df.to_dict("records"):
        ids = np.asarray(row["input_ids"])
        assert len(ids) == 2048
        key_block = ids[row["needle_start"] : row["needle_end"]]
        assert key_block[0] == prompts.KEY and key_block[1 + SPEC.key_len] == prompts.VAL
        assert len(key_block) == 2 + SPEC.key_len + 1  # KEY k1 k2 VAL v1: the rest is scattered
        pos = row["value_positions"]
        assert ids[pos].tolist() == row["answer_ids"][:-1]  # each answer token where the row says
        assert len(set(pos)) == SPEC.value_len and max(pos) < row["question_start"]
        # every value token is still the only token of its band in the prompt
        assert (ids >= SPEC.value_start).sum() == SPEC.value_len
        # far apart: the six value tokens span several 16-token pages
        assert len({p // 16 for p in pos}) >= 4


def test_the_synthetic_renderer_refuses_the_distractor_family():
    with pytest.raises(ValueError, match="distractor"):
        prompts.synthetic_prompt_set(512, 2, seed=1, spec=SPEC, workload="distractor")
    with pytest.raises(ValueError, match="unknown prompt workload"):
        prompts.synthetic_prompt_set(512, 2, seed=1, spec=SPEC, workload="needles")
