"""A transformers ``Cache`` whose band layers compress themselves after prefill (mixed layer types).

Layers outside the band are stock ``DynamicLayer``s.  A :class:`TieredLayer` behaves as a dynamic
layer during prefill, captures the last ``obs_window`` queries (through the attention function), and
on :meth:`TieredCache.compress` turns its pages into exact pages and phantom summaries held by a
decode path.  Every layer reports the *logical* length, so positions and mask sizes continue at N.

``update`` of a tiered layer returns a :class:`TieredKV` handle instead of tensors: the registered
attention function (:mod:`bcr.tiered.attention`) routes it to the layer.  A model left on a stock
attention implementation fails loudly on the handle instead of silently ignoring the phantom bias.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from bcr.phases import PACKING, PHANTOMS, SCORING, SURPRISE, phase
from bcr.tiered import manifest as mf
from bcr.tiered import summaries
from bcr.tiered.paths import PATHS, DecodePath, Tiers, nbytes
from bcr.tiered.settings import TieredSetting


class TieredKV:
    """Stands in for key/value states: the attention function hands the query back to ``layer``."""

    __slots__ = ("layer",)

    def __init__(self, layer: TieredLayer):
        self.layer = layer


class TieredLayer(DynamicLayer):
    """Dense during prefill; after :meth:`compress`, exact pages + phantoms in a decode path."""

    def __init__(
        self,
        layer_idx: int,
        setting: TieredSetting,
        path_name: str,
        forced_phantom: Iterable[int] = (),
        band: list[int] | None = None,
        forced_summary: Iterable[int] = (),
    ):
        super().__init__()
        self.layer_idx = layer_idx
        self.setting = setting
        self.path_cls = PATHS[path_name]
        self.forced_phantom = sorted(set(forced_phantom))
        # the band this layer is in (its share of the exception budget depends on its depth in it),
        # and token positions never kept as exceptions (a test and diagnosis hook)
        self.band = list(band) if band is not None else [layer_idx]
        self.forced_summary = sorted(set(forced_summary))
        self.path: DecodePath | None = None
        self.manifest: mf.LayerManifest | None = None
        self.logical = 0
        self.obs_queries: torch.Tensor | None = None
        self.scaling: float | None = None
        # layer-wise compression: once the layer holds ``compress_when`` tokens, right after its
        # prefill attention, ``on_compress(self)`` compresses it (see TieredCache.compress_during_prefill)
        self.compress_when: int | None = None
        self.on_compress: Callable[[TieredLayer], None] | None = None

    # ``keys``/``values`` stay readable through the cache API: dense tensors before compression,
    # everything stored (exact tokens, phantoms, decode tokens; built on demand) after it.
    @property
    def keys(self) -> torch.Tensor | None:
        return self._keys if self.path is None else self.path.stored_kv()[0]

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._keys = value

    @property
    def values(self) -> torch.Tensor | None:
        return self._values if self.path is None else self.path.stored_kv()[1]

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._values = value

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.path is None:
            super().update(key_states, value_states)
        else:
            self.path.append(key_states, value_states)
        self.logical += key_states.shape[-2]
        handle = TieredKV(self)
        return handle, handle

    def get_seq_length(self) -> int:
        return self.logical

    def reset(self) -> None:
        super().reset()
        self.path = None
        self.manifest = None
        self.logical = 0
        self.obs_queries = None

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a compressed layer cannot be cropped back (its pages were summarised)")

    def attend(self, module, query, attention_mask, scaling, dropout, **kwargs):
        """Prefill: dense sdpa (identical to the stock call) and observation capture; decode: the path."""
        if self.path is None:
            self._observe(query, scaling)
            out = sdpa_attention_forward(
                module,
                query,
                self._keys,
                self._values,
                attention_mask,
                dropout=dropout,
                scaling=scaling,
                **kwargs,
            )
            if self.compress_when is not None and self.logical == self.compress_when:
                self.on_compress(self)  # this layer's dense K/V go before the next layer's are computed
            return out
        return self.path.attend(module, query, attention_mask, scaling, dropout, self.logical, **kwargs)

    def _observe(self, query: torch.Tensor, scaling: float) -> None:
        w = self.setting.obs_window
        q = query[:, :, -w:, :]
        if self.obs_queries is not None and q.shape[-2] < w:  # chunked prefill: keep the last w overall
            q = torch.cat([self.obs_queries, q], dim=-2)[:, :, -w:, :]
        self.obs_queries = q.detach().clone()
        self.scaling = float(scaling)

    def compress(self, reserve: int = 0) -> int:
        """Build the manifest and the decode path from the prefill K/V; return the path's bytes.

        Tensor work is per layer, never per page: importance and the phantom error over all pages at
        once, k-means over all candidate pages at once, and one gather each for the exact tokens and
        the summaries (:func:`_pack`).  ``reserve``: tokens the decode path should leave room for.
        """
        if self.path is not None:
            raise RuntimeError(f"layer {self.layer_idx} is already compressed")
        if self.obs_queries is None or self._keys is None:
            raise RuntimeError(
                f"layer {self.layer_idx}: no prefill observed; is the model's attention set to the tiered "
                "implementation (bcr.tiered.attention.tiered_attention)?"
            )
        s = self.setting
        ps = s.page_size
        keys, values = self._keys, self._values
        b, hk, n, d = keys.shape
        if b != 1:
            raise NotImplementedError("tiered compression is per sequence (batch 1)")
        with phase(SCORING):
            obs = summaries.observe(self.obs_queries, keys, self.scaling)
            importance = summaries.page_importance(obs, ps).tolist()
            m = mf.select_exact(self.layer_idx, n, s, importance, self.forced_phantom)
            cand = mf.candidates(m)
        phantoms = None
        if cand:
            with phase(PHANTOMS):
                idx = torch.tensor(cand, device=keys.device)
                tok = (idx[:, None] * ps + torch.arange(ps, device=keys.device)[None, :]).reshape(-1)
                page_k = keys[0][:, tok].reshape(hk, len(cand), ps, d)
                page_v = values[0][:, tok].reshape(hk, len(cand), ps, d)
                phantoms = summaries.build_phantoms(page_k, page_v, s.phantoms_per_page, s.cluster_iters)
            with phase(SURPRISE):
                errors = summaries.phantom_error(obs, values, cand, ps, phantoms)
                scores = mf.control_scores(s, self.layer_idx, m.n_pages)
                surprise = 0 if s.selection == "recent_only" else s.surprise_pages  # its window holds them
                mf.finish(m, cand, errors.tolist(), surprise, self.forced_phantom, scores)
                budget = s.exception_budget(self.layer_idx, self.band, n)
                if budget and m.phantom:  # what the summaries miss, token by token
                    phantoms = self._exceptions(m, cand, obs, page_k, page_v, phantoms, budget)
        with phase(PACKING):
            self.path = self.path_cls.from_tiers(_pack(m, cand, phantoms, keys, values), ps, reserve)
        self.manifest = m
        self._keys = self._values = None  # the dense prefill tensors are released here
        self.obs_queries = None
        return self.path.nbytes()

    def _exceptions(self, m, cand, obs, page_k, page_v, phantoms, budget: int) -> summaries.Phantoms:
        """Step 5: per KV head, the phantom pages' tokens represented worst stay exact; the phantoms
        are recomputed without them.  The controls rank tokens without looking: at random (seeded by
        layer), or newest first (``recent_only``)."""
        s, ps = self.setting, self.setting.page_size
        hk = page_k.shape[0]
        if s.selection == "random":
            draw = np.random.default_rng([s.selection_seed, self.layer_idx, 1]).random((hk, len(cand), ps))
            scores = torch.from_numpy(draw).to(page_k.device)
        elif s.selection == "recent_only":
            pos = torch.tensor(cand, device=page_k.device)[:, None] * ps + torch.arange(
                ps, device=page_k.device
            )
            scores = pos.to(torch.float32).expand(hk, -1, -1)
        else:
            scores = summaries.exception_scores(s.exception_signal, obs, page_k, page_v, phantoms, cand, ps)
        phantom = set(m.phantom)
        eligible = torch.tensor([p in phantom for p in cand], device=page_k.device)[:, None].repeat(1, ps)
        for t in self.forced_summary:
            if t // ps in phantom:
                eligible[cand.index(t // ps), t % ps] = False
        chosen = summaries.top_exceptions(scores, eligible, budget)
        base = torch.tensor(cand, device=page_k.device)[:, None] * ps + torch.arange(ps, device=page_k.device)
        m.exceptions = [base[chosen[h]].tolist() for h in range(hk)]  # ascending: pages and tokens in order
        return summaries.without_exceptions(phantoms, page_k, page_v, chosen)


def _pack(
    m: mf.LayerManifest,
    cand: list[int],
    phantoms: summaries.Phantoms | None,
    keys: torch.Tensor,
    values: torch.Tensor,
) -> Tiers:
    """The exact tokens (logical order) in one gather, the phantom pages' summaries in another, the
    exceptions (per KV head) in a third."""
    b, hk, n, d = keys.shape
    ps, dev = m.page_size, keys.device
    phantom = torch.tensor(m.phantom, dtype=torch.long, device=dev)
    is_phantom = torch.zeros(m.n_pages, dtype=torch.bool, device=dev)
    is_phantom[phantom] = True
    exact_tok = (~is_phantom).repeat_interleave(ps)[:n].nonzero().squeeze(1)
    page_tokens = torch.full((m.n_pages,), ps, dtype=torch.long)
    page_tokens[-1] = n - (m.n_pages - 1) * ps
    page_tokens[is_phantom.cpu()] = m.phantoms_per_page
    if len(m.phantom):
        cols = torch.searchsorted(torch.tensor(cand, device=dev), phantom)  # candidates ascend
        ph_k = phantoms.keys[:, cols].reshape(hk, -1, d)[None].to(keys.dtype)
        ph_v = phantoms.values[:, cols].reshape(hk, -1, d)[None].to(values.dtype)
        ph_b = phantoms.log_bias[:, cols].reshape(hk, -1)[None].to(keys.dtype)
    else:
        ph_k, ph_v, ph_b = (
            keys.new_empty(b, hk, 0, d),
            values.new_empty(b, hk, 0, d),
            keys.new_empty(b, hk, 0),
        )
    if m.exceptions:  # per KV head, its own tokens: one gather along the token axis
        pos = torch.tensor(m.exceptions, dtype=torch.long, device=dev)[None, :, :, None].expand(b, -1, -1, d)
        ex_k, ex_v = keys.gather(2, pos), values.gather(2, pos)
    else:
        ex_k, ex_v = keys.new_empty(b, hk, 0, d), values.new_empty(b, hk, 0, d)
    return Tiers(
        keys.index_select(2, exact_tok),
        values.index_select(2, exact_tok),
        ph_k,
        ph_v,
        ph_b,
        page_tokens.tolist(),
        is_phantom.tolist(),
        ex_k,
        ex_v,
    )


class PooledLayer(DynamicLayer):
    """An uncompressed layer of a page-native cache: its K/V in one preallocated pool per K and V,
    written in place, so decoding allocates nothing in proportion to the context (a stock
    ``DynamicLayer`` concatenates every step).  Attention reads views of the pool -- the call dense
    makes, bit-exact with it.  ``capacity``: the tokens the layer will hold (prompt + decode);
    outgrown, the pool doubles.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.k_pool: torch.Tensor | None = None
        self.v_pool: torch.Tensor | None = None
        self.used = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self.k_pool is None or self.used + n > self.k_pool.shape[-2]:
            self._grow(max(self.capacity, self.used + n, 2 * self.used), key_states, value_states)
        self.k_pool[:, :, self.used : self.used + n].copy_(key_states)
        self.v_pool[:, :, self.used : self.used + n].copy_(value_states)
        self.used += n
        self.keys = self.k_pool[:, :, : self.used]
        self.values = self.v_pool[:, :, : self.used]
        return self.keys, self.values

    def _grow(self, capacity: int, like_k: torch.Tensor, like_v: torch.Tensor) -> None:
        b, hk, _, d = like_k.shape
        k, v = like_k.new_empty(b, hk, capacity, d), like_v.new_empty(b, hk, capacity, d)
        if self.k_pool is not None:
            k[:, :, : self.used].copy_(self.k_pool[:, :, : self.used])
            v[:, :, : self.used].copy_(self.v_pool[:, :, : self.used])
        self.k_pool, self.v_pool = k, v

    def nbytes(self) -> int:
        return nbytes(self.k_pool) + nbytes(self.v_pool)

    def reset(self) -> None:
        super().reset()
        self.k_pool = self.v_pool = None
        self.used = 0


def _dense_nbytes(layer: DynamicLayer) -> int:
    """Bytes a layer that is not compressed (yet) holds: its pools, or its dense K/V."""
    if isinstance(layer, PooledLayer):
        return layer.nbytes()
    return nbytes(layer.keys) + nbytes(layer.values)


class TieredCache(Cache):
    """Dense layers outside the band, :class:`TieredLayer` inside, compressed once the prompt (or its
    context) is in: layer by layer during the prefill (:meth:`compress_during_prefill`, the path
    fresh runs take, so the dense K/V of every layer never coexist with the compressed cache) or all
    at once after it (:meth:`compress`, for a cache filled from a shared prefill).  Both build the same
    pages from the same K/V and queries; both report the prefill KV high-water mark of the layer-wise
    order (measured in one, computed in the other).

    ``reserve``: the tokens still to come after compression (question chunk and decode), which a
    preallocating decode path sets aside; ``capacity``: the tokens an uncompressed layer will hold
    (prompt and decode), for which the ``paged`` path preallocates its :class:`PooledLayer` s.
    """

    def __init__(
        self,
        model_config: PretrainedConfig,
        setting: TieredSetting,
        decode_path: str = "densify",
        forced_phantom: dict[int, Iterable[int]] | None = None,
        reserve: int = 0,
        capacity: int | None = None,
        forced_summary: dict[int, Iterable[int]] | None = None,
    ):
        layer_types = getattr(model_config, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            raise NotImplementedError(
                f"tiered cache supports full-attention models only, got {set(layer_types)}"
            )
        if decode_path not in PATHS:
            raise KeyError(f"unknown decode path {decode_path!r} (known: {', '.join(PATHS)})")
        num_layers = model_config.num_hidden_layers
        self.setting = setting
        self.decode_path = decode_path
        self.reserve = reserve
        self.band = setting.layers(num_layers)
        forced = forced_phantom or {}
        summary = forced_summary or {}
        unknown = sorted((set(forced) | set(summary)) - set(self.band))
        if unknown:
            raise ValueError(
                f"forced_phantom/forced_summary name layers {unknown} outside the band {self.band}"
            )
        # the page-native path keeps its uncompressed layers in pools too (densify: the note's
        # stock layers); ``capacity`` is the tokens each will hold, prompt and decode
        pooled = decode_path == "paged" and capacity is not None
        layers = [
            TieredLayer(i, setting, decode_path, forced.get(i, ()), self.band, summary.get(i, ()))
            if i in self.band
            else (PooledLayer(capacity) if pooled else DynamicLayer())
            for i in range(num_layers)
        ]
        super().__init__(layers=layers)
        self.compress_s: float | None = None
        self.prompt_logical_tokens: int | None = None
        self.prompt_stored_tokens: int | None = None
        self.prefill_peak_bytes: int | None = None
        self._compress_at: int | None = None

    def tiered_layers(self) -> list[TieredLayer]:
        return [layer for layer in self.layers if isinstance(layer, TieredLayer)]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if key_states.shape[-2] > 1:  # a prefill chunk: the cache's running high-water mark
            self._peak(self.nbytes())
        return out

    def _peak(self, live: int) -> None:
        self.prefill_peak_bytes = max(self.prefill_peak_bytes or 0, live)

    def compress_during_prefill(self, length: int) -> None:
        """Compress each band layer right after its prefill attention, in the forward that brings it
        to ``length`` tokens (the whole prompt: question-aware; the context: question-agnostic)."""
        if self.compress_s is not None:
            raise RuntimeError("the cache is already compressed")
        self._compress_at = length
        self.compress_s = 0.0
        for layer in self.tiered_layers():
            layer.compress_when = length
            layer.on_compress = self._compress_layer

    def _compress_layer(self, layer: TieredLayer) -> None:
        t0 = time.perf_counter()
        live = self.nbytes()  # this layer still dense, those before it compressed
        built = layer.compress(self.reserve)
        self._peak(live + built)
        self.compress_s += time.perf_counter() - t0
        layer.compress_when = layer.on_compress = None
        if all(t.manifest is not None for t in self.tiered_layers()):
            self._count_tokens(self._compress_at)

    def _count_tokens(self, n: int) -> None:
        """Every layer held ``n`` tokens when the band was compressed."""
        self.prompt_logical_tokens = n * len(self.layers)
        self.prompt_stored_tokens = n * (len(self.layers) - len(self.band)) + sum(
            m.stored_tokens for m in self.manifests()
        )

    def compress(self, _cache: Cache | None = None, *, prior_tokens: int = 0) -> None:
        """Compress every band layer of a cache already holding its prompt (usable as
        ``greedy(after_prefill=cache.compress)``).

        The prefill high-water recorded is the one layer-wise compression reaches on the same prompt:
        walking the layers in order, each layer's chunk arrives (layers before it final, layers after it
        holding the ``prior_tokens`` of earlier prefill chunks), then a band layer's pages are built
        beside its dense K/V.  A test checks it against a run that compresses during its prefill.
        """
        if self.compress_s is not None:
            raise RuntimeError("the cache is already compressed")
        t0 = time.perf_counter()
        n = self.layers[0].get_seq_length()
        dense = [_dense_nbytes(layer) for layer in self.layers]
        # before the last chunk a dense layer held ``prior_tokens``; a pooled one its whole pool
        prior = [
            (b if prior_tokens else 0) if isinstance(layer, PooledLayer) else b // n * prior_tokens
            for b, layer in zip(dense, self.layers, strict=True)
        ]
        final: list[int] = []
        peak = 0
        for i, layer in enumerate(self.layers):
            live = sum(final) + dense[i] + sum(prior[i + 1 :])
            peak = max(peak, live)
            if isinstance(layer, TieredLayer):
                built = layer.compress(self.reserve)
                peak = max(peak, live + built)
                final.append(built)
            else:
                final.append(dense[i])
        self.compress_s = time.perf_counter() - t0
        self.prefill_peak_bytes = peak
        self._count_tokens(n)

    def manifests(self) -> list[mf.LayerManifest]:
        return [layer.manifest for layer in self.tiered_layers() if layer.manifest is not None]

    def nbytes(self) -> int:
        """Bytes of everything the cache holds now (stored pages, phantoms, decode tokens, dense layers)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, TieredLayer) and layer.path is not None:
                total += layer.path.nbytes()
            else:
                total += _dense_nbytes(layer)
        return total

    def max_transient_bytes(self) -> int:
        """Largest temporary one layer's decode step builds: densify views (+ GQA copies), or a dense
        layer's ``torch.cat`` growth (old and new keys coexist for a moment; none for a pooled one)."""
        out = 0
        for layer in self.layers:
            if isinstance(layer, TieredLayer) and layer.path is not None:
                out = max(out, layer.path.max_transient_bytes)
            elif not isinstance(layer, PooledLayer):  # a pooled layer is written in place
                out = max(out, nbytes(layer.keys))
        return out
