"""Attention over segments merged by log-sum-exp equals attention over their concatenation."""

from __future__ import annotations

import pytest
import torch

from bcr.tiered import lse

NEG = float("-inf")


def _segments(hk: int, length: int, d: int, dtype, gen, sizes=(13, 0, 29)) -> list[lse.Segment]:
    """Random segments: one empty, one with a log-count-like bias, and (for a chunk) a causal tail."""

    def kv(n):
        return (torch.randn(1, hk, n, d, generator=gen, dtype=dtype) for _ in range(2))

    segs = []
    for i, n in enumerate(sizes):
        k, v = kv(n)
        mask = None
        if i == len(sizes) - 1:  # additive bias per key (phantoms' log n), -inf for an empty cluster
            counts = torch.randint(0, 5, (1, hk, 1, n), generator=gen).to(dtype)
            mask = torch.log(counts)
        segs.append(lse.Segment(k, v, mask))
    if length > 1:
        k, v = kv(length)
        causal = torch.full((length, length), NEG, dtype=dtype).triu(1)
        segs.append(lse.Segment(k, v, causal))
    return segs


def _reference(query, segments, scale):
    """Softmax attention over the concatenation, K/V repeated per query head (float64 math)."""
    b, hq, length, _ = query.shape
    keys, values, masks = [], [], []
    for s in segments:
        n_rep = hq // s.keys.shape[1]
        keys.append(s.keys.repeat_interleave(n_rep, dim=1))
        values.append(s.values.repeat_interleave(n_rep, dim=1))
        m = torch.zeros(b, s.keys.shape[1], length, s.keys.shape[-2], dtype=query.dtype)
        if s.mask is not None:
            m = m + s.mask
        masks.append(m.repeat_interleave(n_rep, dim=1))
    k, v, m = (torch.cat(x, dim=-2 if x is not masks else -1) for x in (keys, values, masks))
    logits = (query.double() @ k.double().transpose(-1, -2)) * scale + m.double()
    ref_lse = torch.logsumexp(logits, dim=-1)
    return torch.softmax(logits, dim=-1) @ v.double(), ref_lse, (k, v, m)


@pytest.mark.parametrize("math", [False, True], ids=["aten_cpu", "math"])
@pytest.mark.parametrize("length", [1, 5])
@pytest.mark.parametrize("hq,hk", [(7, 1), (4, 2), (2, 2)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_merge_equals_attention_over_the_concatenation(math, length, hq, hk, dtype, tol):
    gen = torch.Generator().manual_seed(hq * 10 + length)
    d = 16
    query = torch.randn(1, hq, length, d, generator=gen, dtype=dtype)
    segs = _segments(hk, length, d, dtype, gen)
    res = lse.attend(query, segs, 0.3, math=math)
    ref, ref_lse, (k, v, m) = _reference(query, segs, 0.3)
    assert res.out.shape == query.shape and res.out.dtype == dtype
    assert (res.out.double() - ref).abs().max() < tol
    assert (res.lse.double() - ref_lse).abs().max() < tol * 10
    if dtype == torch.float32:  # and the library's own SDPA over the concatenation agrees
        sdpa = torch.nn.functional.scaled_dot_product_attention(query, k, v, attn_mask=m, scale=0.3)
        assert (res.out - sdpa).abs().max() < tol


@pytest.mark.parametrize("math", [False, True], ids=["aten_cpu", "math"])
@pytest.mark.parametrize("hq,hk", [(7, 1), (4, 2)])
def test_a_row_masked_out_of_one_segment_takes_nothing_from_it(math, hq, hk):
    """The CPU kernel reports lse 0 for a row whose keys are all masked: left so, the merge would
    give that segment weight exp(0 - LSE) and move the output."""
    gen = torch.Generator().manual_seed(7)
    length, d = 3, 8
    query = torch.randn(1, hq, length, d, generator=gen, dtype=torch.float64)
    segs = _segments(hk, length, d, torch.float64, gen, sizes=(11, 6))
    hide = torch.zeros(1, hk, length, 6, dtype=torch.float64)
    hide[:, :, 1] = NEG  # query position 1 sees nothing of the second segment
    hide[:, -1, 2] = NEG  # position 2, last KV head only
    segs[1] = lse.Segment(segs[1].keys, segs[1].values, hide)
    res = lse.attend(query, segs, 0.5, math=math)
    ref, ref_lse, _ = _reference(query, segs, 0.5)
    assert (res.out - ref).abs().max() < 1e-10
    assert (res.lse - ref_lse).abs().max() < 1e-10


@pytest.mark.parametrize("math", [False, True], ids=["aten_cpu", "math"])
def test_a_head_whose_phantoms_are_all_empty_clusters(math):
    """Every key of one head biased -inf (told through ``dead`` as the paged path does, or not)."""
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(1, 4, 1, 8, generator=gen)
    segs = _segments(2, 1, 8, torch.float32, gen, sizes=(9, 5))
    bias = torch.zeros(1, 2, 1, 5)
    bias[:, 0] = NEG
    for dead in (None, torch.isneginf(bias[:, :, 0]).all(-1, keepdim=True)):
        segs[1] = lse.Segment(segs[1].keys, segs[1].values, bias, dead)
        ref, ref_lse, _ = _reference(query, segs, 0.3)
        res = lse.attend(query, segs, 0.3, math=math)
        assert (res.out.double() - ref).abs().max() < 1e-5
        assert (res.lse.double() - ref_lse).abs().max() < 1e-5


def test_rows_nothing_sees_come_out_zero_with_lse_minus_inf():
    gen = torch.Generator().manual_seed(2)
    query = torch.randn(1, 2, 1, 8, generator=gen)
    k, v = torch.randn(1, 1, 4, 8, generator=gen), torch.randn(1, 1, 4, 8, generator=gen)
    hidden = torch.full((1, 1, 1, 4), NEG)
    res = lse.attend(query, [lse.Segment(k, v, hidden), lse.Segment(k, v, hidden)], 0.3)
    assert torch.equal(res.out, torch.zeros_like(query))
    assert torch.isneginf(res.lse).all()
    nothing = lse.attend(query, [lse.Segment(k[:, :, :0], v[:, :, :0])], 0.3)  # no keys at all
    assert torch.equal(nothing.out, torch.zeros_like(query)) and torch.isneginf(nothing.lse).all()


def test_merge_by_hand():
    """Two single-key segments: weights e^a / (e^a + e^b) and e^b / (e^a + e^b)."""
    o1, o2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    a, b = torch.tensor([0.0]), torch.tensor([torch.log(torch.tensor(3.0))])
    out, total = lse.merge([(o1, a), (o2, b)])
    assert torch.allclose(out, torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(total, torch.log(torch.tensor([4.0])))


def test_the_cuda_kernel_is_used_only_once_it_matches_the_plain_one(monkeypatch):
    """No GPU here: the guard is tested with substitute kernels.  A kernel that matches is kept for
    its kind; one that differs or refuses the inputs is dropped with a warning, once per kind."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8)
    mask = torch.zeros(1, 2, 1, 16)

    def right(q, k, v, m, s):
        out, logsumexp, _ = lse._attend_math(q, k, v, m, s)
        return out, logsumexp

    def wrong(q, k, v, m, s):
        out, logsumexp = right(q, k, v, m, s)
        return out + 0.1, logsumexp

    def refuses(q, k, v, m, s):
        raise RuntimeError("attn_bias is not correctly aligned")

    monkeypatch.setattr(lse, "_CUDA_CHECKED", {})
    assert lse._cuda_kernel_agrees(q, k, v, None, 0.35, kernel=right)
    with pytest.warns(UserWarning, match="differs"):
        assert not lse._cuda_kernel_agrees(q, k, v, mask, 0.35, kernel=wrong)
    assert not lse._cuda_kernel_agrees(q, k, v, mask, 0.35, kernel=right)  # decided once per kind
    monkeypatch.setattr(lse, "_CUDA_CHECKED", {})
    with pytest.warns(UserWarning, match="refused"):
        assert not lse._cuda_kernel_agrees(q, k, v, mask, 0.35, kernel=refuses)
