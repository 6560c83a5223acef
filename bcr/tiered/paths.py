"""Decode paths: how a compressed layer holds its pages and how decode queries attend to them.

A decode path is built from the layer's parts (in logical page order: an exact page's tokens, or a
phantom page's summaries with their log-count bias), takes decode tokens, and answers the attention
call for its layer.  ``densify`` is the note's implementation, kept as the honest baseline: pages are
separate tensors and every decode step rebuilds dense K/V views (and the bias row) with ``torch.cat``.
A page-native ``paged`` path (pooled tensors, per-tier attention merged by log-sum-exp) slots in as
another subclass registered in :data:`PATHS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward, use_gqa_in_sdpa


@dataclass
class Part:
    """One page of a compressed layer as stored: exact tokens (bias None) or phantom summaries."""

    keys: torch.Tensor  # [B, Hk, n, D]
    values: torch.Tensor  # [B, Hk, n, D]
    bias: torch.Tensor | None  # [B, Hk, n] additive logit bias (log count), None for exact tokens


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
    def from_parts(cls, parts: list[Part], page_size: int) -> DecodePath: ...

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
    def from_parts(cls, parts: list[Part], page_size: int) -> DensifyPath:
        path = cls(page_size)
        for p in parts:
            path.keys.append(p.keys)
            path.values.append(p.values)
            path.bias.append(p.bias)
            path._bytes += nbytes(p.keys) + nbytes(p.values) + nbytes(p.bias)
            path._tokens += p.keys.shape[-2]
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


PATHS: dict[str, type[DecodePath]] = {DensifyPath.name: DensifyPath}
