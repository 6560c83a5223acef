"""The manual greedy loop is the reference decoder: it must equal ``generate`` on a full cache."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from bcr.generation import cache_nbytes, greedy


def test_greedy_equals_generate(random_tiny_model):
    torch.manual_seed(0)
    ids = torch.randint(16, 256, (1, 300))
    res, _ = greedy(random_tiny_model, ids, 12, stop_at_eos=False)
    ref = random_tiny_model.generate(
        ids,
        max_new_tokens=12,
        do_sample=False,
        min_new_tokens=12,
        pad_token_id=0,
        attention_mask=torch.ones_like(ids),
    )
    assert res.tokens == ref[0, ids.shape[1] :].tolist()
    assert res.ttft_s > 0 and res.tpot_s > 0
    assert res.peak_prefill_bytes is None  # CPU: never a guess


def test_next_token_uses_logical_position(random_tiny_model):
    """Decoding after N tokens must use RoPE position N: shifting it changes the logits."""
    torch.manual_seed(1)
    ids = torch.randint(16, 256, (1, 64))
    full = random_tiny_model(input_ids=ids).logits[0, -1]
    cache = DynamicCache(config=random_tiny_model.config)
    random_tiny_model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True)
    right = random_tiny_model(
        input_ids=ids[:, -1:], position_ids=torch.tensor([[63]]), past_key_values=cache
    ).logits
    torch.testing.assert_close(right[0, -1], full, rtol=1e-4, atol=1e-4)
    cache2 = DynamicCache(config=random_tiny_model.config)
    random_tiny_model(input_ids=ids[:, :-1], past_key_values=cache2, use_cache=True)
    wrong = random_tiny_model(
        input_ids=ids[:, -1:], position_ids=torch.tensor([[70]]), past_key_values=cache2
    ).logits
    assert (wrong[0, -1] - full).abs().max() > 1e-3


def test_stop_at_eos_and_cache_bytes(random_tiny_model):
    ids = torch.randint(16, 256, (1, 32))
    res, cache = greedy(random_tiny_model, ids, 5, stop_at_eos=False)
    first = res.tokens[0]
    stopped, _ = greedy(random_tiny_model, ids, 5, eos_token_ids=[first], stop_at_eos=True)
    assert stopped.tokens == [first] and stopped.tpot_s is None
    cfg = random_tiny_model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    expected = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * (32 + 4) * head_dim * 4
    assert cache_nbytes(cache) == expected


def test_prefill_in_two_chunks_matches_one(random_tiny_model):
    """Context then question (the chunks every mode prefills) computes what a single prefill does."""
    torch.manual_seed(2)
    ids = torch.randint(16, 256, (1, 200))
    whole, _ = greedy(random_tiny_model, ids, 8, stop_at_eos=False, keep_logits=True)
    seen = []
    split, _ = greedy(
        random_tiny_model,
        ids,
        8,
        stop_at_eos=False,
        keep_logits=True,
        split=190,
        after_context=lambda c: seen.append(c.get_seq_length()),
    )
    assert seen == [190]  # the hook ran between the chunks, with the context in the cache
    assert split.tokens == whole.tokens
    for a, b in zip(split.step_logits, whole.step_logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="split"):
        greedy(random_tiny_model, ids, 2, split=200)
