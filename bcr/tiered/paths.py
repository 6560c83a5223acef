"""Decode paths: how a compressed layer holds its pages and how decode queries attend to them.

A decode path is built from the layer's parts (in logical page order: an exact page's tokens, or a
phantom page's summaries with their log-count bias), takes decode tokens, and answers the attention
call for its layer.  ``densify`` is the note's implementation, kept as the honest baseline: pages are
separate tensors and every decode step rebuilds dense K/V views (and the bias row) with ``torch.cat``.
``paged`` is page-native: pooled tensors written in place, each tier attended from its own storage
and the tiers merged exactly by log-sum-exp (:mod:`bcr.tiered.lse`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward, use_gqa_in_sdpa

from bcr.phases import VIEW_REBUILD, phase
from bcr.tiered import lse


@dataclass
class Part:
    """One page of a compressed layer as stored: exact tokens (bias None) or phantom summaries."""

    keys: torch.Tensor  # [B, Hk, n, D]
    values: torch.Tensor  # [B, Hk, n, D]
    bias: torch.Tensor | None  # [B, Hk, n] additive logit bias (log count), None for exact tokens


@dataclass
class Tiers:
    """A compressed layer as packed once at compression: every exact token (logical order) in one
    tensor, every phantom summary (page order) in another, and which page is which.

    ``page_tokens[p]`` is what page ``p`` stores (its exact tokens, or its summaries when
    ``page_phantom[p]``); a decode path copies them once into its own layout.  The exceptions are
    exact tokens (post-RoPE keys: their positions are in them) that belong to no exact page; each
    path attends them as exact tokens.
    """

    keys: torch.Tensor  # [B, Hk, E, D]
    values: torch.Tensor  # [B, Hk, E, D]
    ph_keys: torch.Tensor  # [B, Hk, P, D]
    ph_values: torch.Tensor  # [B, Hk, P, D]
    ph_bias: torch.Tensor  # [B, Hk, P] log member count (-inf for an empty cluster)
    page_tokens: list[int]
    page_phantom: list[bool]
    # exact exceptions inside phantom pages: per KV head its own tokens, X of them in every head
    ex_keys: torch.Tensor | None = None  # [B, Hk, X, D]
    ex_values: torch.Tensor | None = None  # [B, Hk, X, D]

    @property
    def n_exceptions(self) -> int:
        return 0 if self.ex_keys is None else self.ex_keys.shape[-2]

    @classmethod
    def from_parts(cls, parts: list[Part]) -> Tiers:
        """Pack pages given one by one (tests; compression gathers straight into tiers)."""
        exact = [p for p in parts if p.bias is None]
        phantom = [p for p in parts if p.bias is not None]
        k0 = parts[0].keys
        b, hk, _, d = k0.shape

        def cat(ts: list[torch.Tensor], dim: int, shape: tuple) -> torch.Tensor:
            return torch.cat(ts, dim=dim) if ts else k0.new_empty(*shape)

        return cls(
            cat([p.keys for p in exact], -2, (b, hk, 0, d)),
            cat([p.values for p in exact], -2, (b, hk, 0, d)),
            cat([p.keys for p in phantom], -2, (b, hk, 0, d)),
            cat([p.values for p in phantom], -2, (b, hk, 0, d)),
            cat([p.bias for p in phantom], -1, (b, hk, 0)),
            [p.keys.shape[-2] for p in parts],
            [p.bias is not None for p in parts],
        )


def nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def assert_no_padding(attention_mask: torch.Tensor | None) -> None:
    """A compressed layer ignores the model's mask (sized for the logical length): refuse masks that mask."""
    if attention_mask is None:
        return
    masked = ~attention_mask if attention_mask.dtype == torch.bool else attention_mask < 0
    if bool(masked.any()):
        raise NotImplementedError(
            "tiered decode supports unpadded batch-1 decoding only (the mask hides tokens)"
        )


class DecodePath(ABC):
    """Storage + decode attention of one compressed layer."""

    name: ClassVar[str]

    def __init__(self, page_size: int):
        self.page_size = page_size
        self.max_transient_bytes = 0  # largest set of temporaries one attention call built

    @classmethod
    @abstractmethod
    def from_tiers(cls, tiers: Tiers, page_size: int, reserve: int = 0) -> DecodePath:
        """The path holding a compressed prompt; ``reserve``: the tokens still to come (the question
        chunk fed through the compressed cache, then the decode), for a path that preallocates them."""

    @classmethod
    def from_parts(cls, parts: list[Part], page_size: int, reserve: int = 0) -> DecodePath:
        return cls.from_tiers(Tiers.from_parts(parts), page_size, reserve)

    @abstractmethod
    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store decode tokens (post-RoPE keys)."""

    @abstractmethod
    def attend(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        dropout: float,
        logical_length: int,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """Attention output [B, q, Hq, D] of ``query`` over everything stored (bias applied)."""

    @abstractmethod
    def stored_tokens(self) -> int: ...

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of the tensors this path keeps between steps."""

    @abstractmethod
    def stored_kv(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Everything stored as dense tensors (keys, values, bias or None): for inspection and tests."""


def _pages(t: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """``t`` ([B, Hk, T, ...]) cut along its token axis into pages of ``sizes`` (all equal but
    perhaps the last), each page its own contiguous tensor, in one copy for all of them."""
    if not sizes:
        return []
    w = sizes[0]
    full = len(sizes) if sizes[-1] == w else len(sizes) - 1
    if any(n != w for n in sizes[:full]):
        raise ValueError(f"pages of unequal sizes {sorted(set(sizes[:full]))} before the last")
    head = t[:, :, : full * w]
    b, hk = head.shape[:2]
    blocks = head.reshape(b, hk, full, w, *head.shape[3:]).movedim(2, 0).contiguous()
    out = list(blocks.unbind(0))
    if full < len(sizes):
        out.append(t[:, :, full * w :].contiguous())
    return out


class DensifyPath(DecodePath):
    """Pages as separate tensors; dense views rebuilt with ``torch.cat`` at every decode step."""

    name = "densify"

    def __init__(self, page_size: int):
        super().__init__(page_size)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.bias: list[torch.Tensor | None] = []
        self.tail_tokens = 0  # tokens in the last (open, decode-grown) page
        self._zeros: dict[tuple, torch.Tensor] = {}
        self._bytes = 0
        self._tokens = 0

    @classmethod
    def from_tiers(cls, tiers: Tiers, page_size: int, reserve: int = 0) -> DensifyPath:
        """The note's layout: one contiguous tensor per page (made in one copy per tier, so each
        decode step's ``torch.cat`` reads contiguous pages, as it did when every page was cloned)."""
        path = cls(page_size)
        exact = [n for n, ph in zip(tiers.page_tokens, tiers.page_phantom, strict=True) if not ph]
        summary = [n for n, ph in zip(tiers.page_tokens, tiers.page_phantom, strict=True) if ph]
        ek, ev = _pages(tiers.keys, exact), _pages(tiers.values, exact)
        pk, pv, pb = (
            _pages(tiers.ph_keys, summary),
            _pages(tiers.ph_values, summary),
            _pages(tiers.ph_bias, summary),
        )
        e = p = 0
        for phantom in tiers.page_phantom:
            if phantom:
                path.keys.append(pk[p])
                path.values.append(pv[p])
                path.bias.append(pb[p])
                p += 1
            else:
                path.keys.append(ek[e])
                path.values.append(ev[e])
                path.bias.append(None)
                e += 1
        if tiers.n_exceptions:  # one more exact part, before the pages (decode grows the last one)
            path.keys.insert(0, tiers.ex_keys.contiguous())
            path.values.insert(0, tiers.ex_values.contiguous())
            path.bias.insert(0, None)
        path._bytes = sum(nbytes(t) for t in (tiers.keys, tiers.values, tiers.ph_keys, tiers.ph_values))
        path._bytes += nbytes(tiers.ph_bias) + nbytes(tiers.ex_keys) + nbytes(tiers.ex_values)
        path._tokens = sum(tiers.page_tokens) + tiers.n_exceptions
        path.tail_tokens = page_size  # the prompt's pages are closed; decode starts a new page
        return path

    @property
    def has_phantoms(self) -> bool:
        return any(b is not None for b in self.bias)

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        n = keys.shape[-2]
        if self.tail_tokens + n <= self.page_size:
            self.keys[-1] = torch.cat([self.keys[-1], keys], dim=-2)
            self.values[-1] = torch.cat([self.values[-1], values], dim=-2)
            self.tail_tokens += n
        else:
            self.keys.append(keys)
            self.values.append(values)
            self.bias.append(None)
            self.tail_tokens = n
        self._bytes += nbytes(keys) + nbytes(values)
        self._tokens += n

    def _zero_bias(self, like: torch.Tensor, n: int) -> torch.Tensor:
        key = (like.shape[0], like.shape[1], n, like.dtype, like.device)
        z = self._zeros.get(key)
        if z is None:
            z = self._zeros[key] = torch.zeros(
                like.shape[0], like.shape[1], n, dtype=like.dtype, device=like.device
            )
        return z

    def _bias_row(self) -> torch.Tensor:
        k0 = self.keys[0]
        return torch.cat(
            [
                b if b is not None else self._zero_bias(k0, k.shape[-2])
                for b, k in zip(self.bias, self.keys, strict=True)
            ],
            dim=-1,
        )

    def attend(self, module, query, attention_mask, scaling, dropout, logical_length, **kwargs):
        with phase(VIEW_REBUILD):
            k = torch.cat(self.keys, dim=-2)
            v = torch.cat(self.values, dim=-2)
        transient = nbytes(k) + nbytes(v)
        q_len = query.shape[-2]
        stored = k.shape[-2]
        if not self.has_phantoms and stored == logical_length:
            # Nothing summarised: the model's own mask applies unchanged (keep_all is bit-exact with dense).
            mask = attention_mask
        else:
            if q_len == 1:
                assert_no_padding(attention_mask)
            n_rep = query.shape[1] // k.shape[1]
            with phase(VIEW_REBUILD):
                bias = self._bias_row().repeat_interleave(n_rep, dim=1)[:, :, None, :]  # [B, Hq, 1, S]
            if q_len > 1:  # new tokens see all stored ones and each other causally
                causal = torch.ones(q_len, q_len, dtype=torch.bool, device=k.device).tril()
                visible = torch.cat(
                    [torch.ones(q_len, stored - q_len, dtype=torch.bool, device=k.device), causal], 1
                )
                bias = bias.masked_fill(~visible, float("-inf"))
            mask = bias.to(query.dtype)
            transient += nbytes(mask)
        n_rep = getattr(module, "num_key_value_groups", 1)
        if n_rep > 1 and not use_gqa_in_sdpa(mask, k, v):
            transient += n_rep * (nbytes(k) + nbytes(v))  # sdpa_attention_forward's repeat_kv copies
        self.max_transient_bytes = max(self.max_transient_bytes, transient)
        return sdpa_attention_forward(module, query, k, v, mask, dropout=dropout, scaling=scaling, **kwargs)

    def stored_tokens(self) -> int:
        return self._tokens

    def nbytes(self) -> int:
        return self._bytes

    def stored_kv(self):
        k = torch.cat(self.keys, dim=-2)
        v = torch.cat(self.values, dim=-2)
        return k, v, (self._bias_row() if self.has_phantoms else None)


class PagedPath(DecodePath):
    """Pooled storage, per-tier attention merged by log-sum-exp: nothing proportional to the context
    is concatenated, allocated or looped over per decode step.

    * exact tier: every exact token in one ``[B, Hk, capacity, D]`` pool per K and V -- the
      exceptions (per KV head) first, then the exact pages' tokens in logical order -- with a preallocated tail for the tokens still to come (capacity = the prompt's exact
      tokens + ``reserve``: the question chunk when it is fed through the compressed cache, plus
      ``max_new_tokens - 1``), written in place; outgrown, it doubles (a copy, never one per step);
    * phantom tier: all summaries in one tensor, their log-count bias stored once as an additive
      mask row ``[B, Hk, 1, P]`` (and which heads have every phantom at -inf, for the lse fix-up).

    A single decode token attends the exact pool without a mask (its own key is the newest one
    stored); a multi-token chunk (the question fed through the compressed cache) attends the older
    exact tokens unmasked and its own tokens, the pool's last ``L``, with a causal ``L x L`` mask.
    A layer with no phantom (keep_all) attends with the very ``sdpa_attention_forward`` call dense
    makes, on views of the pool, so it is bit-exact with dense.

    Accounting: :meth:`nbytes` is the pools' *allocated* bytes (the reserve included: that is real
    memory), :meth:`stored_tokens` the tokens in use; ``max_transient_bytes`` sums what one attention
    call builds (per-tier outputs and lse, the merge, a chunk's mask and query copy, the math path's
    logits off CPU, GQA copies in the dense-identical call); the CPU kernel's fixed-size blocks are
    not counted.
    """

    name = "paged"

    def __init__(self, page_size: int, keys: torch.Tensor, values: torch.Tensor, used: int, tiers: Tiers):
        super().__init__(page_size)
        self.k_pool, self.v_pool, self.used = keys, values, used
        self.ph_keys, self.ph_values = tiers.ph_keys, tiers.ph_values
        bias = tiers.ph_bias
        self.ph_mask = bias[:, :, None, :]  # [B, Hk, 1, P]
        self.ph_dead = torch.isneginf(bias).all(dim=-1, keepdim=True)  # [B, Hk, 1]

    @classmethod
    def from_tiers(cls, tiers: Tiers, page_size: int, reserve: int = 0) -> PagedPath:
        """The exact tier copied once into a pool with ``reserve`` free slots; the phantom tier as is."""
        b, hk, e, d = tiers.keys.shape
        x = tiers.n_exceptions
        used = x + e
        capacity = used + max(reserve, 1)
        keys = tiers.keys.new_empty(b, hk, capacity, d)
        values = tiers.values.new_empty(b, hk, capacity, d)
        if x:  # the exceptions first: the newest tokens stay last (a chunk's causal segment)
            keys[:, :, :x].copy_(tiers.ex_keys)
            values[:, :, :x].copy_(tiers.ex_values)
        keys[:, :, x:used].copy_(tiers.keys)
        values[:, :, x:used].copy_(tiers.values)
        return cls(page_size, keys, values, used, tiers)

    @property
    def has_phantoms(self) -> bool:
        return self.ph_keys.shape[-2] > 0

    @property
    def capacity(self) -> int:
        return self.k_pool.shape[-2]

    def _grow(self, need: int) -> None:
        capacity = max(2 * self.capacity, need)
        for name in ("k_pool", "v_pool"):
            old = getattr(self, name)
            new = old.new_empty(*old.shape[:2], capacity, old.shape[-1])
            new[:, :, : self.used].copy_(old[:, :, : self.used])
            setattr(self, name, new)

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        n = keys.shape[-2]
        if self.used + n > self.capacity:
            self._grow(self.used + n)
        self.k_pool[:, :, self.used : self.used + n].copy_(keys)
        self.v_pool[:, :, self.used : self.used + n].copy_(values)
        self.used += n

    def _exact(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k_pool[:, :, : self.used], self.v_pool[:, :, : self.used]

    def attend(self, module, query, attention_mask, scaling, dropout, logical_length, **kwargs):
        k, v = self._exact()
        if not self.has_phantoms and self.used == logical_length:
            # Nothing summarised: dense's own call on views of the pool (bit-exact with dense).
            n_rep = getattr(module, "num_key_value_groups", 1)
            transient = 0
            if n_rep > 1 and not use_gqa_in_sdpa(attention_mask, k, v):
                transient = n_rep * (nbytes(k) + nbytes(v))  # sdpa_attention_forward's repeat_kv copies
            self.max_transient_bytes = max(self.max_transient_bytes, transient)
            return sdpa_attention_forward(
                module, query, k, v, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        q_len = query.shape[-2]
        if q_len == 1:
            assert_no_padding(attention_mask)
            segments = [lse.Segment(k, v)]
        else:  # the chunk's own tokens are the newest: causal among themselves, all older ones visible
            causal = torch.full((q_len, q_len), float("-inf"), dtype=query.dtype, device=query.device)
            causal = causal.triu_(1)
            old = self.used - q_len
            segments = [
                lse.Segment(k[:, :, :old], v[:, :, :old]),
                lse.Segment(k[:, :, old:], v[:, :, old:], causal),
            ]
        segments.append(lse.Segment(self.ph_keys, self.ph_values, self.ph_mask, self.ph_dead))
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        res = lse.attend(query, segments, scale)
        out = res.out.transpose(1, 2).contiguous()
        transient = res.transient + (0 if out.data_ptr() == res.out.data_ptr() else nbytes(out))
        transient += 0 if q_len == 1 else nbytes(causal)
        self.max_transient_bytes = max(self.max_transient_bytes, transient)
        return out, None

    def stored_tokens(self) -> int:
        return self.used + self.ph_keys.shape[-2]

    def nbytes(self) -> int:
        return sum(
            nbytes(t)
            for t in (self.k_pool, self.v_pool, self.ph_keys, self.ph_values, self.ph_mask, self.ph_dead)
        )

    def stored_kv(self):
        """Exceptions, exact tokens (logical order), then phantoms: tier order, not page order."""
        k, v = self._exact()
        if not self.has_phantoms:
            return k, v, None
        bias = torch.cat([torch.zeros_like(k[..., 0]), self.ph_mask[:, :, 0]], dim=-1)
        return torch.cat([k, self.ph_keys], dim=-2), torch.cat([v, self.ph_values], dim=-2), bias


PATHS: dict[str, type[DecodePath]] = {DensifyPath.name: DensifyPath, PagedPath.name: PagedPath}
