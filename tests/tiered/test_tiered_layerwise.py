"""Compression layer by layer during the prefill (the fresh runs' order), its accounting, the packed
layout, and the latency decomposition the instrumented runs write."""

from __future__ import annotations

import pytest
import torch

from bcr import phases
from bcr.contracts import DENSE_PATH, DENSE_STATIC_PATH
from bcr.prompts import question_split
from bcr.tiered import shared, summaries
from bcr.tiered.attention import tiered_attention
from bcr.tiered.harness import decomposition_frame, measure, run_dense, run_tiered
from bcr.tiered.settings import resolve

MODES = ["question_aware", "question_agnostic"]
KW = {"max_new_tokens": 16, "stop_at_eos": False, "keep_logits": True, "eos_token_ids": []}


def _ids(prompt):
    return torch.tensor([list(prompt["input_ids"])]), question_split(prompt)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["densify", "paged"])
@pytest.mark.parametrize("setting", ["middle", "all_ret10_n1"])
def test_layerwise_compression_equals_compress_after_prefill(setup, mode, path, setting):
    config, loaded, prompts = setup
    s = resolve(config, setting)
    for prompt in prompts(1024).to_dict("records"):
        ids, split = _ids(prompt)
        during = run_tiered(loaded, ids, s, path, KW, None, mode, split, layerwise=True)
        after = run_tiered(loaded, ids, s, path, KW, None, mode, split, layerwise=False)
        assert during.result.tokens == after.result.tokens
        assert [m.to_json() for m in during.manifests] == [m.to_json() for m in after.manifests]
        for a, b in zip(during.result.step_logits, after.result.step_logits, strict=True):
            assert torch.equal(a, b)
        # measured while compressing layer by layer == what compress() computes for that order
        assert during.peak_bytes_prefill == after.peak_bytes_prefill
        assert (during.logical_tokens, during.stored_tokens) == (after.logical_tokens, after.stored_tokens)


def test_layerwise_prefill_high_water_is_one_dense_layer_plus_the_compressed_rest(setup):
    """Question-agnostic: the context is one chunk, so while layer i is compressed the layers after
    it hold nothing yet -- the mark never reaches the all-dense context K/V."""
    config, loaded, prompts = setup
    s = resolve(config, "all_ret10_n1")  # every layer compressed
    n_layers = loaded.model.config.num_hidden_layers
    prompt = prompts(2048, 1).to_dict("records")[0]
    ids, split = _ids(prompt)
    run = run_tiered(loaded, ids, s, "paged", KW, None, "question_agnostic", split)
    dense = run_dense(loaded, ids, KW, split)
    dense_context = dense.peak_bytes_prefill * split // ids.shape[1]  # all layers, the context only
    one_layer = dense_context // n_layers
    assert run.peak_bytes_prefill <= one_layer + run.stored_bytes  # stored: the pools, reserve included
    assert run.peak_bytes_prefill < dense_context - one_layer  # far below every layer dense at once
    # the aware mode prefills context then question: the context K/V of every layer are in before
    # the question chunk lets the first layer compress, and the accounting says so
    aware = run_tiered(loaded, ids, s, "paged", KW, None, "question_aware", split)
    assert aware.peak_bytes_prefill >= dense_context


@pytest.mark.parametrize("path", ["densify", "paged"])
def test_packed_tiers_hold_each_page_where_the_manifest_says(setup, path):
    """One gather per tier must put every exact page's tokens, in logical order, where the per-page
    layout would: a wrong index (an off-by-one page, a phantom's column) fails here."""
    config, loaded, prompts = setup
    s = resolve(config, "all_ret10_n1")
    prompt = prompts(1024, 1).to_dict("records")[0]
    ids, split = _ids(prompt)
    _ctx, full = shared.capture(loaded, ids, split, s.obs_window, s.page_size)
    cache = shared.tiered_from(loaded.model.config, full, s, path)
    cache.compress()
    for i, layer in enumerate(cache.layers):
        m = layer.manifest
        dense_k, dense_v = full.keys[i], full.values[i]
        want = torch.cat([dense_k[:, :, p * s.page_size : (p + 1) * s.page_size] for p in m.exact], dim=-2)
        want_v = torch.cat([dense_v[:, :, p * s.page_size : (p + 1) * s.page_size] for p in m.exact], dim=-2)
        k, v, bias = layer.path.stored_kv()
        n_exact = want.shape[-2]
        n_summary = len(m.phantom) * s.phantoms_per_page
        if path == "paged":  # tier order: exact tokens, then the summaries
            assert torch.equal(k[:, :, :n_exact], want) and torch.equal(v[:, :, :n_exact], want_v)
            assert k.shape[-2] == n_exact + n_summary
            assert bool((bias[..., :n_exact] == 0).all())
        else:  # page order: each page's exact tokens or its summaries, in place
            at, got = 0, []
            for p in range(m.n_pages):
                width = (
                    s.phantoms_per_page if p in m.phantom else min(s.page_size, m.n_tokens - p * s.page_size)
                )
                if p not in m.phantom:
                    got.append(k[:, :, at : at + width])
                else:  # this page's own summaries (k-means is per page, so one page alone gives them)
                    page = slice(p * s.page_size, (p + 1) * s.page_size)
                    ph = summaries.build_phantoms(
                        dense_k[0][:, None, page],
                        dense_v[0][:, None, page],
                        s.phantoms_per_page,
                        s.cluster_iters,
                    )
                    torch.testing.assert_close(k[0, :, at : at + width], ph.keys[:, 0].to(k.dtype))
                    torch.testing.assert_close(bias[0, :, at : at + width], ph.log_bias[:, 0].to(k.dtype))
                at += width
            assert at == k.shape[-2] == n_exact + n_summary
            assert torch.equal(torch.cat(got, dim=-2), want)


def test_decomposition_phases_sum_to_each_instrumented_run(setup):
    config, loaded, prompts = setup
    settings = [resolve(config, "middle"), resolve(config, "all_ret10_n1")]
    generation = {"max_new_tokens": 16, "stop_at_eos": False, "warmup": 0, "repeats": 1}
    rows: list[dict] = []
    frames = measure(
        loaded,
        prompts(1024),
        settings,
        ["densify", "paged"],
        generation,
        torch.device("cpu"),
        MODES,
        timed_prompts=2,
        decomposition_prompts=1,
        decomposition=rows,
    )
    df = decomposition_frame(rows)
    assert set(df["prompt_id"]) == {prompts(1024)["prompt_id"].iloc[0]}  # only the first timed prompt
    arms = df.groupby(["query_mode", "setting", "decode_path"])
    # per mode: dense, dense_static, 2 settings x 2 paths
    assert len(arms) == 2 * (2 + 2 * 2)
    for (_mode, _setting, path), g in arms:
        sec = g.set_index("phase")["seconds"]
        assert set(sec.index) == set(phases.PHASES)
        assert sec.sum() == pytest.approx(g["total_s"].iloc[0], rel=1e-9)
        assert g["reference_s"].iloc[0] > 0 and g["steps"].iloc[0] == 15
        assert sec[phases.PREFILL_FORWARD] > 0 and sec[phases.DECODE_ATTENTION] > 0
        assert sec[phases.DECODE_OTHER] > 0
        compression = sum(sec[p] for p in phases.COMPRESSION_PHASES)
        if path in (DENSE_PATH, DENSE_STATIC_PATH):
            assert compression == 0 and sec[phases.VIEW_REBUILD] == 0
        else:
            assert sec[phases.SCORING] > 0 and sec[phases.PACKING] > 0
            assert (sec[phases.VIEW_REBUILD] > 0) == (path == "densify")  # paged rebuilds nothing
    for _mode, frame in frames.items():
        timed = frame[frame["repeats"] > 0]
        assert len(timed) and timed["tpot_ratio_static"].notna().all()
        dense_rows = timed[timed["decode_path"] == DENSE_PATH]
        assert dense_rows["static_exact"].all()  # StaticCache decodes the same tokens
        assert frame[frame["repeats"] == 0]["ttft_ratio_static"].isna().all()


def test_an_instrumented_run_computes_what_an_uninstrumented_one_does(setup):
    config, loaded, prompts = setup
    s = resolve(config, "all_ret10_n1")
    prompt = prompts(512, 1).to_dict("records")[0]
    ids, split = _ids(prompt)
    plain = run_tiered(loaded, ids, s, "densify", KW, None, "question_agnostic", split)
    clock = phases.PhaseClock(torch.device("cpu"))
    with phases.timing(clock), tiered_attention(loaded.model):
        timed = run_tiered(loaded, ids, s, "densify", KW, None, "question_agnostic", split)
    assert timed.result.tokens == plain.result.tokens
    assert clock.total > 0 and clock.seconds[phases.VIEW_REBUILD] > 0


def _paged_run(loaded, ids, split, s, mode, capacity):
    from bcr.generation import greedy
    from bcr.tiered.cache import TieredCache

    n = ids.shape[1]
    reserve = shared.reserve_tokens(mode, n, split, KW["max_new_tokens"])
    cache = TieredCache(loaded.model.config, s, "paged", None, reserve, capacity)
    cache.compress_during_prefill(n if mode == "question_aware" else split)
    with tiered_attention(loaded.model):
        res, cache = greedy(loaded.model, ids, cache=cache, split=split, **KW)
    return res, cache


@pytest.mark.parametrize("mode", MODES)
def test_paged_pools_its_uncompressed_layers_bit_exact_with_stock_layers(setup, mode):
    """``middle`` leaves two of four layers uncompressed: on the paged path they live in pools
    written in place (no torch.cat per step), and the run is the stock layers' bit for bit."""
    from bcr.tiered.cache import PooledLayer

    config, loaded, prompts = setup
    s = resolve(config, "middle")
    prompt = prompts(1024, 1).to_dict("records")[0]
    ids, split = _ids(prompt)
    capacity = shared.dense_capacity(ids.shape[1], KW["max_new_tokens"])
    stock, stock_cache = _paged_run(loaded, ids, split, s, mode, None)
    pooled, cache = _paged_run(loaded, ids, split, s, mode, capacity)
    assert pooled.tokens == stock.tokens
    for a, b in zip(pooled.step_logits, stock.step_logits, strict=True):
        assert torch.equal(a, b)
    layers = [layer for layer in cache.layers if isinstance(layer, PooledLayer)]
    assert len(layers) == 2 and not any(isinstance(x, PooledLayer) for x in stock_cache.layers)
    for layer in layers:  # sized for the prompt and every fed decode token: never regrown
        assert layer.k_pool.shape[-2] == capacity == layer.used
    # the decode transient is the compressed layers' alone (stock layers add a layer's torch.cat)
    assert cache.max_transient_bytes() < stock_cache.max_transient_bytes()
    assert cache.nbytes() == stock_cache.nbytes()  # full pools hold exactly the stock layers' tokens
