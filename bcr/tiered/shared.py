"""One prefill per prompt, shared by every setting and both question modes.

Prefill and observation queries do not depend on the setting, so a sweep need not repeat them: the
prompt is prefilled once (context, then question) through a capture cache that keeps every layer's
dense K/V and its last ``obs_window`` queries, and each (setting, mode) compresses from that snapshot:

* ``question_agnostic`` -- from the snapshot after the context; the question is then fed through
  the compressed cache;
* ``question_aware`` -- from the snapshot after the whole prompt (its last logits choose the first
  token, as in a fresh run).

Nothing here copies a tensor: compression gathers from the snapshot's K/V into new tensors, and appending a
decode token concatenates into a new tensor, so the snapshot stays as captured for the next setting.
A run from a snapshot computes what a fresh run computes (tests/tiered check token and logit
equality), at the cost of one compression and one decode per setting instead of a prefill each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from transformers import DynamicCache

from bcr.contracts import QUERY_MODES
from bcr.generation import GreedyResult, decode_steps, prefill_chunk
from bcr.models import LoadedModel
from bcr.tiered.attention import tiered_attention
from bcr.tiered.cache import PooledLayer, TieredCache, TieredLayer
from bcr.tiered.settings import TieredSetting

QUESTION_AWARE, QUESTION_AGNOSTIC = QUERY_MODES


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Every layer's dense K/V and last observation queries after ``length`` prompt tokens."""

    length: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    obs_queries: list[torch.Tensor]
    scaling: float
    logits: torch.Tensor  # [V] float32 at the last position


def _capture_setting(obs_window: int, page_size: int) -> TieredSetting:
    """Every layer a tiered layer (so each records its queries); never compressed."""
    return TieredSetting(
        name="capture",
        band="all",
        band_range=(0.0, 1.0),
        page_size=page_size,
        sink_pages=1,
        recent_pages=max(1, -(-obs_window // page_size)),
        retain=1.0,
        obs_window=obs_window,
        surprise_pages=0,
        phantoms_per_page=1,
        cluster_iters=1,
    )


def _snapshot(cache: TieredCache, logits: torch.Tensor) -> Snapshot:
    layers: list[TieredLayer] = cache.tiered_layers()
    return Snapshot(
        length=layers[0].logical,
        keys=[layer._keys for layer in layers],
        values=[layer._values for layer in layers],
        obs_queries=[layer.obs_queries for layer in layers],
        scaling=float(layers[0].scaling),
        logits=logits.clone(),
    )


@torch.inference_mode()
def capture(
    loaded: LoadedModel, ids: torch.Tensor, split: int, obs_window: int, page_size: int
) -> tuple[Snapshot, Snapshot]:
    """Prefill ``ids`` as context ``[:split]`` then question: the snapshot after each chunk."""
    model = loaded.model
    cache = TieredCache(model.config, _capture_setting(obs_window, page_size))
    snaps = []
    with tiered_attention(model):
        for a, b in ((0, split), (split, ids.shape[1])):
            snaps.append(_snapshot(cache, prefill_chunk(model, ids, a, b, cache)))
    return snaps[0], snaps[1]


def reserve_tokens(mode: str, prompt_len: int, split: int | None, max_new_tokens: int) -> int:
    """Tokens a compressed layer still takes after compression: the question chunk when it is fed
    through the compressed cache (question-agnostic), then the decode (``max_new_tokens - 1`` fed
    tokens: the last one generated is never fed back)."""
    decode = max(max_new_tokens - 1, 0)
    if mode == QUESTION_AGNOSTIC:
        if split is None:
            raise ValueError("the question-agnostic mode needs the prompt's question_start")
        return prompt_len - split + decode
    if mode == QUESTION_AWARE:
        return decode
    raise ValueError(f"unknown query mode {mode!r} (known: {', '.join(QUERY_MODES)})")


def dense_capacity(prompt_len: int, max_new_tokens: int) -> int:
    """Tokens an uncompressed layer holds by the end: the prompt and the fed decode tokens."""
    return prompt_len + max(max_new_tokens - 1, 0)


def tiered_from(
    model_config,
    snap: Snapshot,
    setting: TieredSetting,
    path: str = "densify",
    forced_phantom: dict[int, Iterable[int]] | None = None,
    reserve: int = 0,
    capacity: int | None = None,
) -> TieredCache:
    """A tiered cache holding the snapshot's prompt, dense, ready to :meth:`TieredCache.compress`."""
    kept = snap.obs_queries[0].shape[-2]
    if setting.obs_window > kept and snap.length > kept:
        raise ValueError(
            f"{setting.name}: obs_window {setting.obs_window} exceeds the {kept} queries captured"
        )
    cache = TieredCache(model_config, setting, path, forced_phantom, reserve, capacity)
    for i, layer in enumerate(cache.layers):
        k, v = snap.keys[i], snap.values[i]
        if isinstance(layer, PooledLayer):
            layer.update(k, v)  # copied into its pool (the snapshot stays as captured)
            continue
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        if isinstance(layer, TieredLayer):
            layer.logical = snap.length
            layer.obs_queries = snap.obs_queries[i][:, :, -setting.obs_window :, :]
            layer.scaling = snap.scaling
    return cache


def dense_from(model_config, snap: Snapshot) -> DynamicCache:
    """The stock cache holding the snapshot's prompt (the dense reference continues from it)."""
    cache = DynamicCache(config=model_config)
    for i, layer in enumerate(cache.layers):
        layer.lazy_initialization(snap.keys[i], snap.values[i])
        layer.keys, layer.values = snap.keys[i], snap.values[i]
    return cache


@torch.inference_mode()
def run_dense_from(loaded: LoadedModel, prompt: Snapshot, kw: dict) -> tuple[GreedyResult, DynamicCache]:
    """The dense reference trajectory after the whole prompt."""
    cache = dense_from(loaded.model.config, prompt)
    tokens, logits = _decode(loaded, cache, prompt.logits, prompt.length, kw)
    return GreedyResult(tokens, prompt.logits, None, None, logits), cache


@torch.inference_mode()
def run_tiered_from(
    loaded: LoadedModel,
    context: Snapshot,
    prompt: Snapshot,
    ids: torch.Tensor,
    setting: TieredSetting,
    mode: str,
    kw: dict,
    path: str = "densify",
    forced_phantom: dict[int, Iterable[int]] | None = None,
) -> tuple[GreedyResult, TieredCache]:
    """One (setting, mode) from the shared snapshots; untimed (timing comes from fresh runs)."""
    model = loaded.model
    reserve = reserve_tokens(mode, prompt.length, context.length, kw["max_new_tokens"])
    capacity = dense_capacity(prompt.length, kw["max_new_tokens"])
    if mode == QUESTION_AWARE:
        cache = tiered_from(model.config, prompt, setting, path, forced_phantom, reserve, capacity)
        cache.compress(prior_tokens=context.length)  # prefilled as context, then question
        first = prompt.logits
    elif mode == QUESTION_AGNOSTIC:
        cache = tiered_from(model.config, context, setting, path, forced_phantom, reserve, capacity)
        cache.compress()
        with tiered_attention(model):
            first = prefill_chunk(model, ids, context.length, prompt.length, cache).clone()
    else:
        raise ValueError(f"unknown query mode {mode!r} (known: {', '.join(QUERY_MODES)})")
    with tiered_attention(model):
        tokens, logits = _decode(loaded, cache, first, prompt.length, kw)
    return GreedyResult(tokens, first, None, None, logits), cache


def _decode(loaded: LoadedModel, cache, first: torch.Tensor, n: int, kw: dict):
    return decode_steps(
        loaded.model,
        cache,
        first,
        n,
        kw["max_new_tokens"],
        set(kw.get("eos_token_ids") or []),
        kw.get("stop_at_eos", True),
        kw.get("keep_logits", True),
    )
