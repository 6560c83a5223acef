"""Exact exceptions inside summarised pages, on the trained model and on the summaries' maths.

The adversarial half: on a scattered prompt, the value tokens sit alone in phantom pages; the
exceptions keep them exact and the output is exact, and forbidding one value token's exception
(``forced_summary``) must break exactness within the answer.  A test that still passed with that
exception gone would not be testing the exceptions.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bcr.prompts import question_split, synthetic_prompt_set
from bcr.tiered import controls, summaries
from bcr.tiered.harness import _gen_kwargs, compare, run_dense, run_tiered
from bcr.tiered.settings import resolve
from bcr.training import needle_spec

CONTEXT = 1024
MODES = ("question_aware", "question_agnostic")


@pytest.fixture(scope="module")
def scattered(setup):
    """(config, loaded, kw, the scattered prompts dense answers right, their dense runs)."""
    config, loaded, _ = setup
    spec = needle_spec(config["prompts"], config["model"]["architecture"])
    prompts = synthetic_prompt_set(CONTEXT, 6, config["prompts"]["seed"], spec, workload="scattered")
    kw = _gen_kwargs(loaded, dict(config["generation"], max_new_tokens=12))
    out = []
    for row in prompts.to_dict("records"):
        ids = torch.tensor([row["input_ids"]])
        dense = run_dense(loaded, ids, kw)
        if dense.result.tokens[: len(row["answer_ids"])] == list(row["answer_ids"]):
            out.append((row, ids, dense))
    assert len(out) >= 2, f"the model answers only {len(out)}/6 scattered prompts at {CONTEXT} densely"
    return config, loaded, kw, out[:2]


def _split(row) -> int:
    return question_split(row)


def _setting(config, **changes):
    return dataclasses.replace(resolve(config, "all_ret0_p1_e05"), **changes)


@pytest.mark.parametrize("mode", MODES)
def test_exceptions_keep_every_value_token_exact_and_the_output_follows(scattered, mode):
    config, loaded, kw, prompts = scattered
    setting = _setting(config)
    for row, ids, dense in prompts:
        runs = {
            path: run_tiered(loaded, ids, setting, path, kw, query_mode=mode, split=_split(row))
            for path in ("densify", "paged")
        }
        for path, run in runs.items():
            exact, first, _ = compare(dense.result, run.result)
            assert exact, f"{row['prompt_id']} {mode} {path}: first divergence at {first}"
        paged = runs["paged"]
        held: set[int] = set()
        for m in paged.manifests:
            assert m.exceptions and len({len(h) for h in m.exceptions}) == 1  # X per head, every head
            assert all(t // setting.page_size in m.phantom for h in m.exceptions for t in h)
            held |= set().union(*map(set, m.exceptions))
        # a value token summarised in every layer is kept exact as an exception in one of them
        values = {int(p) for p in row["value_positions"]}
        lone = {p for p in values if all(p // setting.page_size in m.phantom for m in paged.manifests)}
        assert lone, "no value token was summarised in every layer: the test shows nothing"
        assert lone <= held, (sorted(lone), sorted(held))
        # exceptions count in the stored tokens, as the path holds them
        assert paged.stored_tokens == runs["densify"].stored_tokens
        assert paged.stored_tokens < paged.logical_tokens * 0.25


def test_losing_one_value_tokens_exception_breaks_exactness_inside_the_answer(scattered):
    config, loaded, kw, prompts = scattered
    setting = _setting(config)
    row, ids, dense = prompts[0]
    base = run_tiered(loaded, ids, setting, "paged", kw)
    assert compare(dense.result, base.result)[0]
    band = [m.layer for m in base.manifests]
    # the last value token, alone in its page: forbid it as an exception in every layer
    lone = int(row["value_positions"][-1])
    assert all(lone // setting.page_size in m.phantom for m in base.manifests)
    run = run_tiered(loaded, ids, setting, "paged", kw, forced_summary={layer: [lone] for layer in band})
    exact, first, _ = compare(dense.result, run.result)
    assert not exact and first is not None and first <= 6, first
    assert all(lone not in h for m in run.manifests for h in m.exceptions)


def test_without_exceptions_the_lone_value_tokens_are_lost(scattered):
    """The same budget spent on no exceptions (retain 0, exceptions 0) is not exact: the bed needs them."""
    config, loaded, kw, prompts = scattered
    setting = _setting(config, exceptions=0.0)
    lost = 0
    for _, ids, dense in prompts:
        lost += not compare(dense.result, run_tiered(loaded, ids, setting, "paged", kw).result)[0]
    assert lost == len(prompts)


@pytest.mark.parametrize("kind", controls.CONTROLS)
def test_matched_controls_choose_exceptions_without_looking_and_fail(scattered, kind):
    config, loaded, kw, prompts = scattered
    method = _setting(config)
    control = controls.matched(method, kind, seed=0)
    for row, ids, dense in prompts:
        ours = run_tiered(loaded, ids, method, "paged", kw)
        run = run_tiered(loaded, ids, control, "paged", kw)
        assert run.stored_tokens == ours.stored_tokens  # the same budget, exceptions included
        assert not compare(dense.result, run.result)[0], f"{kind} stayed exact on {row['prompt_id']}"
        if kind == "recent_only":  # the newest tokens of the phantom pages
            for m in run.manifests:
                newest = sorted(t for p in m.phantom for t in range(p * m.page_size, (p + 1) * m.page_size))
                assert m.exceptions[0] == newest[-len(m.exceptions[0]) :]


def test_keep_all_with_an_exception_budget_is_bit_exact(scattered):
    config, loaded, kw, prompts = scattered
    setting = dataclasses.replace(resolve(config, "keep_all"), exceptions=0.05)
    _, ids, dense = prompts[0]
    for path in ("densify", "paged"):
        run = run_tiered(loaded, ids, setting, path, kw)
        assert run.result.tokens == dense.result.tokens
        assert all(
            torch.equal(a, b) for a, b in zip(run.result.step_logits, dense.result.step_logits, strict=True)
        )
        assert all(not m.exceptions and not m.phantom for m in run.manifests)


def test_tapered_budgets_keep_the_total_and_tilt_it_across_depth(setup):
    config, _, _ = setup
    band = [0, 1, 2, 3]
    flat = _setting(config, exceptions=0.01)
    pyramid = _setting(config, exceptions=0.01, exception_taper=0.5)
    inverse = _setting(config, exceptions=0.01, exception_taper=-0.5)
    per = {s: [s.exception_budget(layer, band, 8192) for layer in band] for s in (flat, pyramid, inverse)}
    assert per[flat] == [82] * 4
    assert per[pyramid] == sorted(per[pyramid], reverse=True) and per[pyramid][0] > 82 > per[pyramid][-1]
    assert per[inverse] == per[pyramid][::-1]
    assert abs(sum(per[pyramid]) - sum(per[flat])) <= 2


def test_removing_exceptions_from_a_cluster_leaves_the_mean_of_the_rest():
    torch.manual_seed(0)
    keys = torch.randn(2, 3, 8, 4)
    values = torch.randn(2, 3, 8, 4)
    keys[1, 2, 5] += 40.0  # an outlier key: reconstruction error ranks it first in its head
    ph = summaries.build_phantoms(keys, values, k=1, iters=2)
    obs = summaries.observe(torch.randn(1, 2, 1, 4), keys.reshape(1, 2, 24, 4), 0.5)
    scores = summaries.exception_scores("reconstruction", obs, keys, values, ph, [0, 1, 2], 8)
    chosen = summaries.top_exceptions(scores, torch.ones(3, 8, dtype=torch.bool), budget=1)
    assert chosen[1].nonzero().tolist() == [[2, 5]] and int(chosen.sum()) == 2
    rest = summaries.without_exceptions(ph, keys, values, chosen)
    keep = ~chosen[1, 2]
    assert torch.allclose(rest.keys[1, 2, 0], keys[1, 2][keep].mean(0))
    assert torch.allclose(rest.values[1, 2, 0], values[1, 2][keep].mean(0))
    assert rest.counts[1, 2, 0] == 7 and rest.counts[1, 0, 0] == 8
    # a cluster emptied by its exceptions weighs nothing (log count -inf)
    gone = summaries.without_exceptions(ph, keys, values, torch.ones_like(chosen))
    assert torch.isneginf(gone.log_bias).all()
    # ineligible tokens (exact pages) are never chosen
    eligible = torch.ones(3, 8, dtype=torch.bool)
    eligible[2] = False
    assert not summaries.top_exceptions(scores, eligible, budget=4)[:, 2].any()
