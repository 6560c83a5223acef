"""Greedy decoding with explicit positions, timed honestly.

A manual loop rather than ``generate``: a compressed cache stores fewer tokens than it represents,
and ``generate`` derives positions from what it thinks was fed (DESIGN.md, "Facts checked against the pinned versions").  Positions here are
always the logical ones (prompt length + step).  On a plain DynamicCache this loop equals
``generate(do_sample=False)`` token for token (tests/test_generation.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import Cache, DynamicCache

from bcr.phases import DECODE_OTHER, PREFILL_FORWARD, phase
from bcr.runtime import Stopwatch, cuda_peak


@dataclass
class GreedyResult:
    tokens: list[int]
    first_logits: torch.Tensor  # [V] float32, logits that chose the first token
    ttft_s: float | None  # prefill through the first token (None: an untimed run from a shared prefill)
    tpot_s: float | None  # mean seconds per decode step (None if only one token was produced)
    step_logits: list[torch.Tensor] = field(default_factory=list)  # [V] per step, when kept
    peak_prefill_bytes: int | None = None
    peak_decode_bytes: int | None = None


def cache_nbytes(cache: Cache) -> int:
    """Bytes held by the cache's key/value tensors (any layer type exposing ``keys``/``values``)."""
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


@torch.inference_mode()
def prefill_chunk(model, input_ids: torch.Tensor, a: int, b: int, cache: Cache) -> torch.Tensor:
    """Feed prompt tokens ``[a, b)`` at their logical positions; the float32 logits at the last one."""
    pos = torch.arange(a, b, device=input_ids.device).unsqueeze(0)
    out = model(
        input_ids=input_ids[:, a:b], position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1
    )
    return out.logits[0, -1].float()


@torch.inference_mode()
def decode_steps(
    model,
    cache: Cache,
    first_logits: torch.Tensor,
    n: int,
    max_new_tokens: int,
    eos: set[int],
    stop_at_eos: bool = True,
    keep_logits: bool = False,
) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens from the logits after an ``n``-token prompt, the cache holding that prompt."""
    token = int(first_logits.argmax())
    tokens = [token]
    step_logits = [first_logits] if keep_logits else []
    device = first_logits.device
    while len(tokens) < max_new_tokens and not (stop_at_eos and token in eos):
        with phase(DECODE_OTHER):
            step_ids = torch.tensor([[token]], device=device)
            pos = torch.tensor([[n + len(tokens) - 1]], device=device)
            out = model(input_ids=step_ids, position_ids=pos, past_key_values=cache, use_cache=True)
            logits = out.logits[0, -1].float()
            token = int(logits.argmax())
        tokens.append(token)
        if keep_logits:
            step_logits.append(logits.clone())
    return tokens, step_logits


@torch.inference_mode()
def greedy(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    cache: Cache | None = None,
    eos_token_ids: list[int] | None = None,
    stop_at_eos: bool = True,
    keep_logits: bool = False,
    after_prefill: Callable[[Cache], None] | None = None,
    split: int | None = None,
    after_context: Callable[[Cache], None] | None = None,
) -> tuple[GreedyResult, Cache]:
    """Greedy-decode ``max_new_tokens`` tokens after ``input_ids`` ([1, N]).

    ``split`` prefills in two chunks, the context ``[:split]`` then the question ``[split:]``, the
    way a cache reused by many questions is filled; ``after_context`` runs between them (a cache
    compressing the context before the question arrives: the question-agnostic protocol, so even
    the first answer token is computed over the compressed cache).  ``after_prefill`` runs after the
    whole prompt, before the first token is chosen (compressing with the question in view).  Both
    are part of TTFT, since the first token cannot be served before them.  Under an instrumented
    run (:mod:`bcr.phases`) the prefill is one ``prefill_forward`` phase and each decode step one
    ``decode_other`` phase, with whatever they contain timed inside them.
    """
    device = input_ids.device
    clock = Stopwatch(device)
    cache = cache if cache is not None else DynamicCache(config=model.config)
    n = input_ids.shape[1]
    eos = set(eos_token_ids or [])
    peaks: dict[str, int | None] = {}

    if split is not None and not 0 < split < n:
        raise ValueError(f"split {split} must fall inside the prompt (1..{n - 1})")
    if after_context is not None and split is None:
        raise ValueError("after_context needs a split: it runs between the context and the question")
    chunks = [(0, n)] if split is None else [(0, split), (split, n)]

    t0 = clock.now()
    with cuda_peak(device, lambda b: peaks.__setitem__("prefill", b)), phase(PREFILL_FORWARD):
        for i, (a, b) in enumerate(chunks):
            if i == 1 and after_context is not None:
                after_context(cache)
            logits = prefill_chunk(model, input_ids, a, b, cache)
        if after_prefill is not None:
            after_prefill(cache)
        int(logits.argmax())  # the first token is chosen inside TTFT (on CUDA this also waits for it)
    t1 = clock.now()
    first_logits = logits.clone()
    with cuda_peak(device, lambda b: peaks.__setitem__("decode", b)):
        tokens, step_logits = decode_steps(
            model, cache, first_logits, n, max_new_tokens, eos, stop_at_eos, keep_logits
        )
    t2 = clock.now()
    steps = len(tokens) - 1
    return (
        GreedyResult(
            tokens=tokens,
            first_logits=first_logits,
            ttft_s=t1 - t0,
            tpot_s=(t2 - t1) / steps if steps else None,
            step_logits=step_logits,
            peak_prefill_bytes=peaks.get("prefill"),
            peak_decode_bytes=peaks.get("decode"),
        ),
        cache,
    )
