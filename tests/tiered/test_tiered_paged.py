"""The page-native ``paged`` decode path: dense-exact with nothing summarised, densify's tokens with
phantoms, and a decode step that allocates nothing in proportion to the context."""

from __future__ import annotations

import types

import pytest
import torch

from bcr.generation import greedy
from bcr.prompts import question_split
from bcr.tiered.attention import tiered_attention
from bcr.tiered.cache import TieredCache
from bcr.tiered.harness import run_dense, run_tiered
from bcr.tiered.paths import DensifyPath, PagedPath, Part
from bcr.tiered.settings import resolve
from bcr.tiered.shared import reserve_tokens

MODES = ["question_aware", "question_agnostic"]
KW = {"max_new_tokens": 32, "stop_at_eos": False, "keep_logits": True, "eos_token_ids": []}


def _ids(prompt):
    return torch.tensor([list(prompt["input_ids"])]), question_split(prompt)


@pytest.mark.parametrize("mode", MODES)
def test_keep_all_paged_is_bit_exact_with_dense(setup, mode):
    config, loaded, prompts = setup
    keep_all = resolve(config, "keep_all")
    for prompt in prompts(512).to_dict("records"):
        ids, split = _ids(prompt)
        dense = run_dense(loaded, ids, KW, split).result
        paged = run_tiered(loaded, ids, keep_all, "paged", KW, None, mode, split)
        assert paged.stored_tokens == paged.logical_tokens
        assert paged.result.tokens == dense.tokens
        assert len(paged.result.step_logits) == len(dense.step_logits) == KW["max_new_tokens"]
        for a, b in zip(paged.result.step_logits, dense.step_logits, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("setting", ["middle", "all_ret10_n1"])
@pytest.mark.parametrize("context", [512, 2048])
def test_paged_tokens_equal_densify(setup, mode, setting, context):
    config, loaded, prompts = setup
    s = resolve(config, setting)
    for prompt in prompts(context).to_dict("records"):
        ids, split = _ids(prompt)
        ref = run_tiered(loaded, ids, s, "densify", KW, None, mode, split)
        paged = run_tiered(loaded, ids, s, "paged", KW, None, mode, split)
        assert paged.stored_tokens == ref.stored_tokens < paged.logical_tokens  # really compressed
        assert [m.to_json() for m in paged.manifests] == [m.to_json() for m in ref.manifests]
        assert paged.result.tokens == ref.result.tokens
        diff = max(
            float((a - b).abs().max())
            for a, b in zip(paged.result.step_logits, ref.result.step_logits, strict=True)
        )
        assert diff < 1e-4  # float32 rounding only (a one-token causal slip moves them ~4e-4)


def _decode(loaded, prompt, setting, path, mode, steps=8):
    """Greedy decode through a tiered cache; each layer's pools and capacity right after compression."""
    ids, split = _ids(prompt)
    reserve = reserve_tokens(mode, ids.shape[1], split, steps)  # the question chunk (agnostic) + decode
    cache = TieredCache(loaded.model.config, setting, path, reserve=reserve)
    seen = {}

    def compress(c):
        c.compress()
        for layer in c.tiered_layers():
            p = layer.path
            if isinstance(p, PagedPath):
                seen[layer.layer_idx] = (p.k_pool.data_ptr(), p.v_pool.data_ptr(), p.ph_keys.data_ptr())

    hook = {"after_prefill": compress} if mode == "question_aware" else {"after_context": compress}
    with tiered_attention(loaded.model):
        greedy(loaded.model, ids, steps, cache=cache, split=split, stop_at_eos=False, **hook)
    return cache, seen, split if mode == "question_agnostic" else ids.shape[1]


@pytest.mark.parametrize("mode", MODES)
def test_decode_steps_allocate_nothing_proportional_to_the_context(setup, mode):
    config, loaded, prompts = setup
    s = resolve(config, "all_ret10_n1")  # every layer compressed: every layer on the LSE path
    transient = {}
    for context in (512, 2048):
        cache, seen, compressed_at = _decode(
            loaded, prompts(context, 1).to_dict("records")[0], s, "paged", mode
        )
        layers = cache.tiered_layers()
        assert len(seen) == len(layers) == loaded.model.config.num_hidden_layers
        for layer in layers:
            p = layer.path
            assert p.has_phantoms
            # written in place: the pools are the ones compression allocated
            assert (p.k_pool.data_ptr(), p.v_pool.data_ptr(), p.ph_keys.data_ptr()) == seen[layer.layer_idx]
            # every token fed after compression (question chunk, 7 decode tokens) sits in the tail,
            # sized for exactly them when the pool was made (the last token is never fed back)
            assert p.used == layer.manifest.exact_tokens + layer.logical - compressed_at
            assert p.capacity == layer.manifest.exact_tokens + cache.reserve == p.used
        transient[context] = [layer.path.max_transient_bytes for layer in layers]
        ref, _, _ = _decode(loaded, prompts(context, 1).to_dict("records")[0], s, "densify", mode)
        transient["densify", context] = [layer.path.max_transient_bytes for layer in ref.tiered_layers()]
    assert transient[512] == transient[2048]
    assert all(t > 0 for t in transient[512])
    # the same measure sees densify's views grow with the context (so the equality is not vacuous)
    assert all(a < b for a, b in zip(transient["densify", 512], transient["densify", 2048], strict=True))


def _parts(gen, hk=2, d=8, ps=16):
    def t(*shape):
        return torch.randn(1, hk, *shape, generator=gen)

    bias = torch.log(torch.tensor([5.0, 11.0])).expand(1, hk, 2).clone()
    bias[:, 1, 0] = float("-inf")  # an empty cluster
    return [
        Part(t(ps, d), t(ps, d), None),
        Part(t(2, d), t(2, d), bias),
        Part(t(ps, d), t(ps, d), None),
        Part(t(5, d), t(5, d), None),  # the prompt's last, partial page
    ]


def test_pool_grows_geometrically_and_attends_like_densify():
    gen = torch.Generator().manual_seed(0)
    parts = _parts(gen)
    paged = PagedPath.from_parts(parts, 16, reserve=2)
    dense = DensifyPath.from_parts(parts, 16)
    module = types.SimpleNamespace(num_key_value_groups=2, is_causal=True)
    logical = 16 * 3 + 5
    assert (paged.used, paged.capacity, paged.stored_tokens()) == (37, 39, 39)
    ptrs = set()
    for step in range(12):
        k, v = torch.randn(1, 2, 1, 8, generator=gen), torch.randn(1, 2, 1, 8, generator=gen)
        paged.append(k, v)
        dense.append(k, v)
        ptrs.add(paged.k_pool.data_ptr())
        logical += 1
        q = torch.randn(1, 4, 1, 8, generator=gen)
        a, _ = paged.attend(module, q, None, 0.35, 0.0, logical)
        b, _ = dense.attend(module, q, None, 0.35, 0.0, logical)
        assert a.shape == b.shape == (1, 1, 4, 8)
        assert (a - b).abs().max() < 1e-5, step
    assert paged.capacity == 78 and len(ptrs) == 2  # one doubling for 12 tokens past a reserve of 2
    # a chunk of new tokens: causal among themselves, every older token visible
    k, v = torch.randn(1, 2, 5, 8, generator=gen), torch.randn(1, 2, 5, 8, generator=gen)
    paged.append(k, v)
    dense.append(k, v)
    q = torch.randn(1, 4, 5, 8, generator=gen)
    a, _ = paged.attend(module, q, None, 0.35, 0.0, logical + 5)
    b, _ = dense.attend(module, q, None, 0.35, 0.0, logical + 5)
    assert (a - b).abs().max() < 1e-5
    exact = [i for i in range(dense._tokens) if i not in (16, 17)]  # densify keeps page order
    for mine, theirs in zip(paged.stored_kv()[:2], dense.stored_kv()[:2], strict=True):
        assert torch.equal(mine[:, :, : paged.used], theirs[:, :, exact])
        assert torch.equal(mine[:, :, paged.used :], theirs[:, :, 16:18])
    assert torch.equal(paged.stored_kv()[2][..., -2:], dense.stored_kv()[2][..., 16:18])
    assert paged.nbytes() >= 2 * paged.capacity * 2 * 8 * 4  # allocated pools, reserve included
