"""Phantom summaries: the log(n) bias makes a summary of identical keys exact (brute force, fp64)."""

from __future__ import annotations

import math
import types

import pytest
import torch

from bcr.tiered import summaries
from bcr.tiered.paths import DensifyPath, Part


def _exact_attention(q, k, v, scaling):
    """Brute force: softmax(q k^T * scale) v over every token, fp64.  q [R, D], k/v [N, D]."""
    w = torch.softmax(q @ k.T * scaling, dim=-1)
    return w @ v


def _phantom_attention(q, k_exact, v_exact, pk, pv, log_n, scaling):
    """Exact tokens plus phantom tokens whose logits carry +log n."""
    logits = torch.cat([q @ k_exact.T * scaling, q @ pk.T * scaling + log_n[None, :]], dim=-1)
    w = torch.softmax(logits, dim=-1)
    return w @ torch.cat([v_exact, pv])


def _page_of_identical_keys(seed=0, n_ctx=40, ps=16, d=8):
    g = torch.Generator().manual_seed(seed)
    ctx_k = torch.randn(n_ctx, d, generator=g, dtype=torch.float64)
    ctx_v = torch.randn(n_ctx, d, generator=g, dtype=torch.float64)
    page_k = torch.randn(1, d, generator=g, dtype=torch.float64).expand(ps, d).clone()
    page_v = torch.randn(ps, d, generator=g, dtype=torch.float64)  # values differ: only keys coincide
    q = torch.randn(5, d, generator=g, dtype=torch.float64) * 2
    return q, ctx_k, ctx_v, page_k, page_v


def test_log_n_bias_over_identical_keys_equals_exact_attention():
    q, ctx_k, ctx_v, page_k, page_v = _page_of_identical_keys()
    scaling = 1 / math.sqrt(q.shape[-1])
    ph = summaries.build_phantoms(page_k[None, None], page_v[None, None], k=2, iters=3)
    pk, pv, counts = ph.keys[0, 0].double(), ph.values[0, 0].double(), ph.counts[0, 0].double()
    assert sorted(counts.tolist()) == [0.0, 16.0]  # all tokens in one cluster, the other empty
    exact = _exact_attention(q, torch.cat([ctx_k, page_k]), torch.cat([ctx_v, page_v]), scaling)
    phantom = _phantom_attention(q, ctx_k, ctx_v, pk, pv, torch.log(counts), scaling)
    torch.testing.assert_close(phantom, exact, rtol=1e-12, atol=1e-12)
    # Without the bias the summary weighs as one token instead of 16: clearly wrong.
    unbiased = _phantom_attention(q, ctx_k, ctx_v, pk, pv, torch.where(counts > 0, 0.0, -math.inf), scaling)
    assert (unbiased - exact).abs().max() > 1e-3


def test_densify_decode_path_applies_the_bias_like_brute_force():
    """The decode path (sdpa with a float bias row, GQA) against brute force on the same parts, fp64."""
    q, ctx_k, ctx_v, page_k, page_v = _page_of_identical_keys(seed=1)
    d = q.shape[-1]
    scaling = 1 / math.sqrt(d)
    ph = summaries.build_phantoms(page_k[None, None], page_v[None, None], k=2, iters=3)
    # Two KV heads (the second a scaled copy), four query heads: head h uses KV head h // 2.
    kv = lambda t: torch.stack([t, 0.5 * t])[None]  # noqa: E731  [1, 2, n, d]
    ph2 = summaries.build_phantoms(kv(page_k)[0][:, None], kv(page_v)[0][:, None], k=2, iters=3)
    parts = [
        Part(kv(ctx_k[:16]), kv(ctx_v[:16]), None),
        Part(
            ph2.keys[:, 0][None].double(), ph2.values[:, 0][None].double(), ph2.log_bias[:, 0][None].double()
        ),
        Part(kv(ctx_k[16:]), kv(ctx_v[16:]), None),
    ]
    path = DensifyPath.from_parts(parts, page_size=16)
    query = torch.stack([q[:1], q[1:2], q[2:3], q[3:4]])[None]  # [1, 4 heads, 1, d]
    module = types.SimpleNamespace(num_key_value_groups=2, is_causal=True, training=False)
    out, _ = path.attend(module, query, None, scaling, 0.0, logical_length=ctx_k.shape[0] + 16)
    for h in range(4):
        kh = h // 2
        k_all = torch.cat([kv(ctx_k)[0, kh], kv(page_k)[0, kh]])
        v_all = torch.cat([kv(ctx_v)[0, kh], kv(page_v)[0, kh]])
        expected = _exact_attention(query[0, h], k_all, v_all, scaling)
        torch.testing.assert_close(out[0, 0, h], expected[0], rtol=1e-10, atol=1e-10)
    assert ph.counts.sum() == 16


@pytest.mark.parametrize("n", [96, 100])  # whole pages, and a partial last page (padded, never a candidate)
def test_phantom_error_matches_brute_force_swap(n):
    torch.manual_seed(0)
    hk, hq, d, w, ps = 2, 4, 8, 8, 16
    keys = torch.randn(1, hk, n, d)
    values = torch.randn(1, hk, n, d)
    query = torch.randn(1, hq, w, d)
    scaling = d**-0.5
    obs = summaries.observe(query, keys, scaling)
    pages = [1, 3]
    tok = torch.cat([torch.arange(p * ps, (p + 1) * ps) for p in pages])
    ph = summaries.build_phantoms(
        keys[0][:, tok].reshape(hk, 2, ps, d), values[0][:, tok].reshape(hk, 2, ps, d), k=3, iters=2
    )
    err = summaries.phantom_error(obs, values, pages, ps, ph)
    for c, p in enumerate(pages):
        diffs = []
        for h in range(hq):
            kh = h // (hq // hk)
            keep = torch.tensor([j for j in range(n) if not p * ps <= j < (p + 1) * ps])
            for r in range(w):
                pos = n - w + r
                vis = keep[keep <= pos]
                full = _exact_attention(
                    query[0, h, r : r + 1].double(),
                    keys[0, kh, : pos + 1].double(),
                    values[0, kh, : pos + 1].double(),
                    scaling,
                )
                swapped = _phantom_attention(
                    query[0, h, r : r + 1].double(),
                    keys[0, kh, vis].double(),
                    values[0, kh, vis].double(),
                    ph.keys[kh, c].double(),
                    ph.values[kh, c].double(),
                    torch.log(ph.counts[kh, c].double()),
                    scaling,
                )
                diffs.append(float((swapped - full).norm()))
        assert abs(sum(diffs) / len(diffs) - float(err[c])) < 1e-4
    # Chunking pages (one per chunk here) changes nothing.
    torch.testing.assert_close(summaries.phantom_error(obs, values, pages, ps, ph, max_elements=1), err)


def test_importance_is_a_distribution_over_pages_and_respects_causality():
    torch.manual_seed(0)
    keys = torch.randn(1, 2, 70, 8)
    query = torch.randn(1, 4, 4, 8)
    obs = summaries.observe(query, keys, 8**-0.5)
    imp = summaries.page_importance(obs, 16)
    assert imp.shape == (5,)
    assert abs(float(imp.sum()) - 1.0) < 1e-5
    # Query rows see only keys up to their own position: the last row of each head sees all 70.
    assert torch.isinf(obs.logits[:, 0, 67:]).all() and torch.isfinite(obs.logits[:, 3, :]).all()
