"""The local engine in-process: real reuse (only the suffix is computed, K/V read from the pool),
bit-exact arms, the reference greedy loop, force-miss, flush, and a wrong slot caught by the
long-context comparison."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcr import config as cfgmod
from bcr.generation import greedy
from bcr.models import load_model
from bcr.serving import client, correctness, runs
from bcr.serving.local import LocalEngine
from bcr.serving.workloads import TraceRequest


@pytest.fixture(scope="module")
def model():
    cfg = cfgmod.load(cfgmod.REPO_ROOT / "config" / "config.yaml")
    return load_model(cfg["model"], torch.device("cpu"), root=cfgmod.REPO_ROOT).model


def _engine(model, arm: str = "bcr", chunk: int | None = 256) -> LocalEngine:
    return LocalEngine(model, arm, page_size=16, kv_tokens=8192, max_context=8192, chunk=chunk)


def _prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(3, 256, size=n).tolist()


def _ask(engine: LocalEngine, prompt: list[int], n: int = 6) -> tuple[list[int], list[float], int]:
    out = list(engine.generate(prompt, n))
    return [t for t, _, _ in out], [lp for _, _, lp in out], out[0][1]


def _record_extends(engine: LocalEngine) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    extend = engine.hooks.extend

    def spy(run, start, end, slots):
        calls.append((start, end))
        extend(run, start, end, slots)

    engine.hooks.extend = spy
    return calls


def test_the_second_ask_prefills_only_the_suffix(model):
    engine = _engine(model)
    calls = _record_extends(engine)
    prompt = _prompt(600, 0)
    cold = _ask(engine, prompt)
    assert cold[2] == 0 and calls[:3] == [(0, 256), (256, 512), (512, 600)]
    calls.clear()
    warm = _ask(engine, prompt)
    # everything but the last (partial) page is cached: at least one prompt token is computed
    assert warm[2] == 592 and calls[0] == (592, 600)
    assert sum(b - a for a, b in calls if a < 600) == 8
    assert warm[0] == cold[0]  # the same tokens from K/V read back out of the pool
    engine.engine.assert_balanced()


def test_the_engine_matches_the_reference_greedy_loop(model):
    prompt = _prompt(700, 1)
    ref, _ = greedy(model, torch.tensor([prompt]), 6, stop_at_eos=False)
    tokens, logprobs, _ = _ask(_engine(model, chunk=None), prompt)
    assert tokens == ref.tokens
    assert logprobs[0] == float(torch.log_softmax(ref.first_logits, -1)[ref.tokens[0]])


def test_every_arm_serves_the_same_bits_with_the_same_reuse(model):
    system = _prompt(512, 2)
    asks = [system + _prompt(40, 10 + i) for i in range(3)] + [_prompt(300, 3)]
    got = {}
    for arm in ("bcr", "radix", "unified_python", "unified_rust"):
        engine = _engine(model, arm)
        got[arm] = [_ask(engine, p) for p in asks]
        engine.engine.assert_balanced()
    assert [g[2] for g in got["bcr"]] == [0, 512, 512, 0]
    for arm in ("radix", "unified_python", "unified_rust"):
        assert got[arm] == got["bcr"], arm


def test_force_miss_computes_every_token(model, monkeypatch):
    monkeypatch.setenv("SGLANG_RADIX_FORCE_MISS", "1")
    engine = _engine(model)
    prompt = _prompt(400, 4)
    assert _ask(engine, prompt)[2] == 0 and _ask(engine, prompt)[2] == 0


def test_flush_is_refused_while_a_request_runs_and_empties_the_cache(model):
    engine = _engine(model)
    prompt = _prompt(300, 5)
    gen = engine.generate(prompt, 4)
    next(gen)
    assert engine.busy and not engine.flush()
    list(gen)
    assert engine.cache.evictable_size() > 0 and engine.flush()
    assert engine.cache.evictable_size() == 0
    assert engine.pools.allocator.available_size() == engine.pools.total
    assert _ask(engine, prompt)[2] == 0


def test_a_listener_that_leaves_early_still_releases_its_request(model):
    engine = _engine(model)
    gen = engine.generate(_prompt(300, 6), 5)
    next(gen)
    gen.close()
    assert not engine.busy
    engine.engine.assert_balanced()


def _longctx_rows(model, arm: str, trace: list[TraceRequest], wrong_slot: bool = False):
    engine = _engine(model, "bcr" if arm == "bcr" else "radix")
    if wrong_slot:
        prefix = engine.cache.prefix_device_indices

        def swapped(req):
            slots = prefix(req).clone()
            if len(slots) > 200:
                slots[[100, 101]] = slots[[101, 100]]  # two positions' K/V trade places
            return slots

        engine.cache.prefix_device_indices = swapped
    results = []
    for r in trace:
        tokens, logprobs, cached = _ask(engine, r.prompt.tolist(), len(r.output))
        results.append(
            client.Result(r.rid, len(r.prompt), cached, 0.01, 0.02, tokens, output_logprobs=logprobs)
        )
    return runs.rows(results, workload="longctx", arm=arm, engine="local", force_miss=False)


@pytest.fixture(scope="module")
def longctx_trace():
    prompts = [np.asarray(_prompt(640, 20 + g)) for g in range(2)]
    out = np.zeros(5, dtype=np.int64)
    return [
        TraceRequest(f"longctx-{ask * 2 + g}", "longctx", g, prompts[g], out)
        for ask in range(2)
        for g in range(2)
    ]


def test_the_long_context_check_passes_equal_arms(model, longctx_trace):
    bcr = _longctx_rows(model, "bcr", longctx_trace)
    radix = _longctx_rows(model, "radix", longctx_trace)
    df = correctness.compare(longctx_trace, bcr, radix, "bcr", "radix", "local")
    assert df["exact"].all() and df["tokens_exact"].all() and df["logprobs_exact"].all()
    assert (df["cached_tokens_bcr"] == 624).all() and (df["cached_tokens_radix"] == 624).all()
    assert df["first_divergence"].isna().all()


def test_the_long_context_check_catches_a_wrong_slot(model, longctx_trace):
    """Two swapped prefix slots leave the tiny model's greedy tokens alone on random prompts, but
    not their log-probabilities: ``exact`` (what the ledger reads) must fail."""
    bcr = _longctx_rows(model, "bcr", longctx_trace, wrong_slot=True)
    radix = _longctx_rows(model, "radix", longctx_trace)
    df = correctness.compare(longctx_trace, bcr, radix, "bcr", "radix", "local")
    assert not df["exact"].any() and not df["logprobs_exact"].any()
    assert (df["first_divergent_ask"] == 1).all()  # the cold ask has no prefix to get wrong


def test_a_failed_request_is_never_exact(model, longctx_trace):
    bcr = _longctx_rows(model, "bcr", longctx_trace)
    radix = _longctx_rows(model, "radix", longctx_trace)
    bcr.loc[0, "error"] = "timeout after 1s"
    df = correctness.compare(longctx_trace, bcr, radix, "bcr", "radix", "local")
    assert not df.loc[df["prompt_id"] == 0, "exact"].item() and df.loc[df["prompt_id"] == 1, "exact"].item()
