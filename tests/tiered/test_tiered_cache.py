"""The tiered cache on a real (random-weight) tiny Qwen2: bit-exact keep_all, logical positions, counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import DynamicCache

from bcr.generation import greedy
from bcr.tiered.attention import tiered_attention
from bcr.tiered.cache import TieredCache, TieredKV
from bcr.tiered.manifest import LayerManifest, finish, select_exact
from bcr.tiered.settings import TieredSetting

BASE = TieredSetting(
    name="t",
    band="middle",
    band_range=(0.25, 0.75),
    page_size=16,
    sink_pages=1,
    recent_pages=2,
    retain=0.25,
    obs_window=32,
    surprise_pages=2,
    phantoms_per_page=2,
    cluster_iters=3,
)


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(3)
    return torch.randint(16, 256, (1, 301), generator=g)


def _tiered(model, ids, setting, steps, forced=None):
    cache = TieredCache(model.config, setting, "densify", forced)
    with tiered_attention(model):
        res, cache = greedy(
            model, ids, steps, cache=cache, after_prefill=cache.compress, keep_logits=True, stop_at_eos=False
        )
    return res, cache


def test_keep_all_is_bit_exact_with_dense(random_tiny_model, ids):
    model = random_tiny_model
    dense, _ = greedy(model, ids, 12, keep_logits=True, stop_at_eos=False)
    keep_all = dataclasses.replace(BASE, band="all", band_range=(0.0, 1.0), retain=1.0)
    res, cache = _tiered(model, ids, keep_all, 12)
    assert res.tokens == dense.tokens
    for a, b in zip(res.step_logits, dense.step_logits, strict=True):
        assert torch.equal(a, b)
    assert cache.prompt_stored_tokens == cache.prompt_logical_tokens == 4 * 301
    assert all(not m.phantom for m in cache.manifests())
    # The same comparison notices a real compression: logits move (so the equality above is not vacuous).
    squeezed = dataclasses.replace(BASE, band="all", band_range=(0.0, 1.0), retain=0.0, surprise_pages=0)
    res2, _ = _tiered(model, ids, squeezed, 12)
    assert any(not torch.equal(a, b) for a, b in zip(res2.step_logits, dense.step_logits, strict=False))


def test_next_token_uses_the_logical_position(random_tiny_model, ids):
    """Layer 0 compressed: get_seq_length() is N while it stores fewer; implicit positions continue at N."""
    model = random_tiny_model
    front = dataclasses.replace(BASE, band="front", band_range=(0.0, 0.75))
    n = ids.shape[1]
    nxt = torch.tensor([[42]])

    def step(position_ids):
        cache = TieredCache(model.config, front)
        with tiered_attention(model), torch.inference_mode():
            model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.compress()
            stored = cache.layers[0].path.stored_tokens()
            assert cache.get_seq_length() == n and stored < n
            out = model(input_ids=nxt, position_ids=position_ids, past_key_values=cache, use_cache=True)
        return out.logits[0, -1], stored

    implicit, stored = step(None)
    at_n, _ = step(torch.tensor([[n]]))
    at_stored, _ = step(torch.tensor([[stored]]))
    assert torch.equal(implicit, at_n)
    assert not torch.allclose(implicit, at_stored)


def test_compression_and_stored_fraction_match_a_hand_count(random_tiny_model):
    """N=100, page 16 -> pages 0..6 (page 6 has 4 tokens).  Per compressed layer: sink 0 (16) + recent 6 (4)
    = 20 < 50 = retain 0.5 x 100 -> two more pages by importance (52); one surprise page (68); the other
    two pages become 2 phantoms each (4): 72 stored.  Band middle = layers 1, 2 of 4.
    Logical 4 x 100 = 400; stored 2 x 100 + 2 x 72 = 344; compression 400/344; stored fraction 0.86."""
    setting = dataclasses.replace(BASE, recent_pages=1, retain=0.5, obs_window=4, surprise_pages=1)
    ids = torch.randint(16, 256, (1, 100), generator=torch.Generator().manual_seed(0))
    res, cache = _tiered(random_tiny_model, ids, setting, 3)
    assert cache.band == [1, 2]
    assert cache.prompt_logical_tokens == 400
    assert cache.prompt_stored_tokens == 344
    for m in cache.manifests():
        assert len(m.important) == 2 and len(m.surprise) == 1 and len(m.phantom) == 2
        assert m.exact_tokens == 68 and m.stored_tokens == 72
    for layer in cache.tiered_layers():
        # Real tensors: 72 prompt tokens + 2 fed decode tokens.
        assert layer.path.stored_tokens() == 74
        assert layer.keys.shape[-2] == 74
    from bcr.tiered.harness import TieredRun, _row

    run = TieredRun(
        res, cache.nbytes(), 0, 0, cache.prompt_logical_tokens, cache.prompt_stored_tokens, 0.0, []
    )
    prompt = {"context": 100, "prompt_id": "p", "needle_start": -1, "needle_end": -1, "input_ids": [0] * 100,
              "renderer": "synthetic", "answer_ids": [1], "workload": "needle"}  # fmt: skip
    row = _row(setting, prompt, "densify", run, run, None, "question_aware")
    assert row["compression"] == pytest.approx(400 / 344)
    assert row["stored_fraction"] == pytest.approx(0.86)


def test_neighbour_pages_keep_the_page_after_each_retained_one_inside_the_budget():
    """The page after an attended one (a needle's values after its key) is kept with it; the retain
    budget counts both, so fewer distinct hot spots are kept, never more tokens."""
    imp = [0.05, 0.30, 0.02, 0.40, 0.03, 0.10, 0.10]
    setting = dataclasses.replace(BASE, recent_pages=1, retain=0.5, surprise_pages=1, neighbour_pages=1)
    m = select_exact(5, 100, setting, imp)
    assert (m.sink, m.recent) == ([0], [6])
    assert sorted(m.important) == [3, 4]  # page 3 (most attended) and its neighbour: 16 + 32 + 32 >= 50
    plain = select_exact(5, 100, dataclasses.replace(setting, neighbour_pages=0), imp)
    assert sorted(plain.important) == [1, 3] and plain.exact_tokens == m.exact_tokens


def test_manifest_selection_by_hand():
    imp = [0.05, 0.30, 0.02, 0.40, 0.03, 0.10, 0.10]
    setting = dataclasses.replace(BASE, recent_pages=1, retain=0.5, surprise_pages=1)
    m = select_exact(5, 100, setting, imp)
    assert (m.sink, m.recent, sorted(m.important)) == ([0], [6], [1, 3])
    finish(m, [2, 4, 5], [0.1, 0.5, 0.2], 1)
    assert m.surprise == [4] and m.phantom == [2, 5]
    assert m.exact == [0, 1, 3, 4, 6] and m.stored_tokens == 68 + 4
    assert isinstance(m, LayerManifest) and m.status(2) == "phantom" and m.status(4) == "surprise"
    # Forced pages are never chosen, whatever their importance or error.
    f = select_exact(5, 100, setting, imp, forced_phantom=[3])
    assert 3 not in f.important
    finish(f, [p for p in range(7) if p not in f.exact], [9.0] * (7 - len(f.exact)), 1, forced=[3])
    assert 3 in f.phantom
    with pytest.raises(ValueError):
        select_exact(5, 100, setting, imp, forced_phantom=[0])


def test_stock_attention_refuses_the_tiered_handle(random_tiny_model, ids):
    """Left on plain sdpa, a tiered cache fails loudly instead of silently dropping the phantom bias."""
    cache = TieredCache(random_tiny_model.config, BASE)
    assert random_tiny_model.config._attn_implementation == "sdpa"
    with pytest.raises((TypeError, AttributeError)), torch.inference_mode():
        random_tiny_model(input_ids=ids, past_key_values=cache, use_cache=True)
    assert isinstance(TieredKV(cache.layers[1]).layer, object)


def test_tiered_cache_is_a_transformers_cache_with_mixed_layers(random_tiny_model, ids):
    _, cache = _tiered(random_tiny_model, ids, BASE, 4)
    _, dcache = greedy(
        random_tiny_model, ids, 4, stop_at_eos=False, cache=DynamicCache(config=random_tiny_model.config)
    )
    assert [type(layer).__name__ for layer in cache.layers] == [
        "DynamicLayer",
        "TieredLayer",
        "TieredLayer",
        "DynamicLayer",
    ]
    assert cache.get_seq_length() == dcache.get_seq_length() == 301 + 3
    # Dense layers hold everything; compressed ones hold less, in the cache API's own tensors.
    assert torch.equal(cache.layers[0].keys, dcache.layers[0].keys)
    assert cache.layers[1].keys.shape[-2] < dcache.layers[1].keys.shape[-2]
    assert cache.nbytes() < sum(
        t.numel() * t.element_size() for layer in dcache.layers for t in (layer.keys, layer.values)
    )
