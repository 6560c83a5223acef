"""Exact attention over separately stored segments, merged by log-sum-exp.

Softmax attention over the concatenation of segments equals the LSE-weighted sum of each segment's
own attention: with per-segment outputs ``o_i`` and log-sum-exps ``lse_i`` (natural log),
``LSE = logsumexp_i(lse_i)`` and ``O = sum_i exp(lse_i - LSE) * o_i``.  So the tiers of a compressed
layer (exact tokens, phantom summaries with their log-count bias) are attended one by one, each from
its own storage, and no dense view of the whole context is ever built.

Grouped-query heads: the ``k`` query heads of a KV head are folded into the query rows
(``[B, Hq, L, D] -> [B, Hk, k*L, D]``, row ``r`` = query position ``r % L``), so each KV head is read
once and K/V are never repeated.  A segment's mask is per query position (``[.., L or 1, S]``); for a
multi-token chunk it is tiled over the ``k`` row blocks, which keeps causal masking within the chunk
correct (tests/tiered/test_tiered_lse.py checks it against SDPA over the concatenation).

Kernels: on CPU ``aten._scaled_dot_product_flash_attention_for_cpu`` returns ``(out, logsumexp)``
and takes an additive mask.  Facts checked on torch 2.14.1: a row whose keys are all masked comes
back with lse 0 (not -inf), so such rows are set to -inf here; a call with zero keys kills the
process (SIGFPE), so empty segments are skipped.  On CUDA
``aten._scaled_dot_product_efficient_attention(..., compute_log_sumexp=True)`` returns the
log-sum-exp (padded to a multiple of 32 rows) and takes an additive bias; it is used once it has matched the plain-torch kernel on the first call
of each (dtype, masked) kind in the process (:func:`_cuda_kernel_agrees`), else the plain kernel
is kept and a warning says so.  The plain kernel (float32 logits, exact, a logits row per key, which
:attr:`Attended.transient` counts) is the reference and the fallback; no GPU is needed to test the
fallback logic (tests/tiered/test_tiered_lse.py substitutes the kernel).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

NEG_INF = float("-inf")
# (dtype, masked) -> whether the CUDA kernel matched the plain one on its first call in this process
_CUDA_CHECKED: dict[tuple[torch.dtype, bool], bool] = {}


@dataclass
class Segment:
    """Keys/values of one KV head group, with an optional additive mask (a bias, or -inf to hide)."""

    keys: torch.Tensor  # [B, Hk, S, D]
    values: torch.Tensor  # [B, Hk, S, D]
    mask: torch.Tensor | None = None  # additive, broadcastable to [B, Hk, L, S] (per query position)
    dead: torch.Tensor | None = None  # [B, Hk, L or 1] rows whose keys are all masked; None: from mask


@dataclass
class Attended:
    out: torch.Tensor  # [B, Hq, L, D] in the query's dtype
    lse: torch.Tensor  # [B, Hq, L], float32 at least (-inf where no key is visible)
    transient: int  # bytes of the temporaries this call built (kernel-internal blocks excluded)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact merge of ``(out_i, lse_i)`` computed over disjoint key sets: ``(out, lse)``.

    Rows that no segment sees come out 0 with lse -inf.  A single part is returned unchanged.
    """
    if len(parts) == 1:
        return parts[0]
    lse = torch.logsumexp(torch.stack([lse for _, lse in parts]), dim=0)
    base = lse.masked_fill(torch.isneginf(lse), 0.0)  # exp(-inf - 0) = 0 instead of NaN
    out = None
    for o, part_lse in parts:
        term = torch.exp(part_lse - base)[..., None] * o.to(lse.dtype)
        out = term if out is None else out.add_(term)
    return out.to(parts[0][0].dtype), lse


def _attend_math(q, k, v, mask, scale):
    wide = torch.promote_types(q.dtype, torch.float32)
    logits = torch.matmul(q.to(wide), k.to(wide).transpose(-1, -2)).mul_(scale)
    if mask is not None:
        logits = logits.add_(mask.to(wide))
    lse = torch.logsumexp(logits, dim=-1)
    probs = logits.sub_(lse.masked_fill(torch.isneginf(lse), 0.0)[..., None]).exp_()
    out = torch.matmul(probs, v.to(wide)).to(q.dtype)
    return out, lse, 2 * _nbytes(logits)  # logits (+ softmax's reduction) are a row per key


def _attend_efficient(q, k, v, mask, scale):
    """CUDA memory-efficient attention with its log-sum-exp (rows beyond ``q``'s are padding)."""
    bias = None
    if mask is not None:
        bias = mask.to(q.dtype).expand(q.shape[0], q.shape[1], q.shape[2], k.shape[-2])
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, bias, True, 0.0, False, scale=scale
    )[:2]
    return out, lse[..., : q.shape[-2]].to(torch.promote_types(q.dtype, torch.float32))


def _cuda_kernel_agrees(q, k, v, mask, scale, kernel=_attend_efficient) -> bool:
    """Whether ``kernel`` runs on these inputs and matches the plain kernel (once per kind)."""
    key = (q.dtype, mask is not None)
    if key not in _CUDA_CHECKED:
        ref_out, ref_lse, _ = _attend_math(q, k, v, mask, scale)
        tol = 1e-4 if q.dtype == torch.float32 else 2e-2
        try:
            out, lse = kernel(q, k, v, mask, scale)
            live = torch.isfinite(ref_lse)
            ok = bool(
                torch.allclose(out[live].float(), ref_out[live].float(), atol=tol, rtol=tol)
                and torch.allclose(lse[live].float(), ref_lse[live].float(), atol=tol, rtol=tol)
            )
            why = "its output differs from the plain kernel's"
        except RuntimeError as exc:  # e.g. a bias layout the kernel refuses
            ok, why = False, f"it refused the inputs ({exc})"
        if not ok:
            warnings.warn(f"lse: the CUDA kernel is not used for {key}: {why}", stacklevel=3)
        _CUDA_CHECKED[key] = ok
    return _CUDA_CHECKED[key]


def _fold_mask(mask: torch.Tensor | None, n_rep: int, length: int) -> torch.Tensor | None:
    """A per-position mask ``[.., L, S]`` as a mask over the folded rows ``[.., k*L, S]``."""
    if mask is None or mask.shape[-2] == 1 or n_rep == 1:
        return mask
    return mask.repeat(*([1] * (mask.dim() - 2)), n_rep, 1)


def attend(query: torch.Tensor, segments: list[Segment], scale: float, math: bool | None = None) -> Attended:
    """Attention of ``query`` [B, Hq, L, D] over all ``segments`` (one KV head per ``Hq / Hk`` heads).

    ``math``: the plain-torch kernel (default: only off CPU where the CUDA kernel did not match it;
    tests run it on CPU too).
    """
    cuda = query.device.type == "cuda"
    math = (query.device.type != "cpu" and not cuda) if math is None else math
    b, hq, length, d = query.shape
    live = [s for s in segments if s.keys.shape[-2] > 0]
    if not live:
        out = query.new_zeros(b, hq, length, d)
        lse = torch.full((b, hq, length), NEG_INF, dtype=torch.promote_types(query.dtype, torch.float32))
        return Attended(out, lse, _nbytes(out) + _nbytes(lse))
    hk = live[0].keys.shape[1]
    n_rep = hq // hk
    rows = n_rep * length
    q = query.reshape(b, hk, rows, d)  # a copy only for a multi-token chunk in [B, L, H, D] layout
    transient = 0 if q.data_ptr() == query.data_ptr() else _nbytes(q)
    parts = []
    for s in live:
        mask = _fold_mask(None if s.mask is None else s.mask.to(query.dtype), n_rep, length)
        if mask is not None and mask is not s.mask:
            transient += _nbytes(mask)
        if not math and cuda and not _cuda_kernel_agrees(q, s.keys, s.values, mask, scale):
            out, lse, scratch = _attend_math(q, s.keys, s.values, mask, scale)
            transient += scratch
        elif not math:
            if cuda:
                out, lse = _attend_efficient(q, s.keys, s.values, mask, scale)
            else:
                out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q, s.keys, s.values, attn_mask=mask, scale=scale
                )
            if mask is not None:  # the kernels report lse 0 (or NaN rows) where every key is masked
                dead = s.dead if s.dead is not None else torch.isneginf(s.mask).all(dim=-1)
                dead = _fold_mask(dead[..., None], n_rep, length)[..., 0]
                lse = lse.masked_fill(dead, NEG_INF)
                out = out.masked_fill(dead[..., None], 0.0) if cuda else out
                transient += _nbytes(lse)
        else:
            out, lse, scratch = _attend_math(q, s.keys, s.values, mask, scale)
            transient += scratch
        transient += _nbytes(out) + _nbytes(lse)
        parts.append((out, lse))
    out, lse = merge(parts)
    if len(parts) > 1:
        transient += 2 * _nbytes(out) + (len(parts) + 1) * _nbytes(lse)  # stack, sum and its term
    return Attended(out.reshape(b, hq, length, d), lse.reshape(b, hq, length), transient)
