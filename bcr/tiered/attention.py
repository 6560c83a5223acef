"""The attention implementation that lets decode attention see the phantom bias, registered with transformers.

``AttentionInterface.register`` adds the function; ``AttentionMaskInterface.register`` gives the
name the sdpa mask builder (without it transformers silently passes ``mask=None``).  Plain tensors
(dense layers, a stock cache) go to transformers' own ``sdpa_attention_forward`` unchanged; a
:class:`~bcr.tiered.cache.TieredKV` handle goes to its layer (prefill observation, then the decode
path).  No model code is patched: the model is switched with ``set_attn_implementation``.  In an
instrumented run every decode step's attention call is timed as ``decode_attention`` (dense layers'
too, so a dense run under this implementation decomposes the same way).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from bcr import phases
from bcr.tiered.cache import TieredKV

IMPLEMENTATION = "bcr_tiered"


def tiered_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key,
    value,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    with phases.decode_attention():
        if isinstance(key, TieredKV):
            return key.layer.attend(module, query, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )


def register() -> str:
    """Register the implementation and its mask builder (idempotent); return its name."""
    AttentionInterface.register(IMPLEMENTATION, tiered_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    return IMPLEMENTATION


@contextmanager
def tiered_attention(model) -> Iterator[None]:
    """Run ``model`` on the tiered attention implementation inside the block, then restore its own."""
    register()
    previous = model.config._attn_implementation
    if previous == IMPLEMENTATION:  # already inside a block (an instrumented run of a tiered run)
        yield
        return
    if previous != "sdpa":
        raise ValueError(f"the tiered implementation wraps 'sdpa'; the model uses {previous!r}")
    model.set_attn_implementation(IMPLEMENTATION)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
