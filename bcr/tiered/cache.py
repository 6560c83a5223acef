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
from collections.abc import Iterable

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from bcr.tiered import manifest as mf
from bcr.tiered import summaries
from bcr.tiered.paths import PATHS, DecodePath, Part, nbytes
from bcr.tiered.settings import TieredSetting


class TieredKV:
    """Stands in for key/value states: the attention function hands the query back to ``layer``."""

    __slots__ = ("layer",)

    def __init__(self, layer: TieredLayer):
        self.layer = layer


class TieredLayer(DynamicLayer):
    """Dense during prefill; after :meth:`compress`, exact pages + phantoms in a decode path."""

    def __init__(
        self, layer_idx: int, setting: TieredSetting, path_name: str, forced_phantom: Iterable[int] = ()
    ):
        super().__init__()
        self.layer_idx = layer_idx
        self.setting = setting
        self.path_cls = PATHS[path_name]
        self.forced_phantom = sorted(set(forced_phantom))
        self.path: DecodePath | None = None
        self.manifest: mf.LayerManifest | None = None
        self.logical = 0
        self.obs_queries: torch.Tensor | None = None
        self.scaling: float | None = None

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
            return sdpa_attention_forward(
                module,
                query,
                self._keys,
                self._values,
                attention_mask,
                dropout=dropout,
                scaling=scaling,
                **kwargs,
            )
        return self.path.attend(module, query, attention_mask, scaling, dropout, self.logical, **kwargs)

    def _observe(self, query: torch.Tensor, scaling: float) -> None:
        w = self.setting.obs_window
        q = query[:, :, -w:, :]
        if self.obs_queries is not None and q.shape[-2] < w:  # chunked prefill: keep the last w overall
            q = torch.cat([self.obs_queries, q], dim=-2)[:, :, -w:, :]
        self.obs_queries = q.detach().clone()
        self.scaling = float(scaling)

    def compress(self) -> int:
        """Build the manifest and the decode path from the prefill K/V; return the path's bytes."""
        if self.path is not None:
            raise RuntimeError(f"layer {self.layer_idx} is already compressed")
        if self.obs_queries is None or self._keys is None:
            raise RuntimeError(
                f"layer {self.layer_idx}: no prefill observed; is the model's attention set to the tiered "
                "implementation (bcr.tiered.attention.tiered_attention)?"
            )
        s = self.setting
        keys, values = self._keys, self._values
        b, hk, n, d = keys.shape
        if b != 1:
            raise NotImplementedError("tiered compression is per sequence (batch 1)")
        obs = summaries.observe(self.obs_queries, keys, self.scaling)
        importance = summaries.page_importance(obs, s.page_size).tolist()
        m = mf.select_exact(self.layer_idx, n, s, importance, self.forced_phantom)
        cand = mf.candidates(m)
        phantoms = None
        if cand:
            ps = s.page_size
            idx = torch.tensor(cand, device=keys.device)
            tok = (idx[:, None] * ps + torch.arange(ps, device=keys.device)[None, :]).reshape(-1)
            page_k = keys[0][:, tok].reshape(hk, len(cand), ps, d)
            page_v = values[0][:, tok].reshape(hk, len(cand), ps, d)
            phantoms = summaries.build_phantoms(page_k, page_v, s.phantoms_per_page, s.cluster_iters)
            errors = summaries.phantom_error(obs, values, cand, ps, phantoms)
            scores = mf.control_scores(s, self.layer_idx, m.n_pages)
            surprise = 0 if s.selection == "recent_only" else s.surprise_pages  # its window holds them
            mf.finish(m, cand, errors.tolist(), surprise, self.forced_phantom, scores)
        col = {p: i for i, p in enumerate(cand)}
        phantom = set(m.phantom)
        if phantom:  # one cast for all summaries; each page's part is then its own small tensor
            ph_k = phantoms.keys.to(keys.dtype)
            ph_v = phantoms.values.to(values.dtype)
            ph_b = phantoms.log_bias.to(keys.dtype)
        parts = []
        for p in range(m.n_pages):
            if p in phantom:
                c = col[p]
                parts.append(
                    Part(
                        keys=ph_k[:, c].unsqueeze(0).clone(),
                        values=ph_v[:, c].unsqueeze(0).clone(),
                        bias=ph_b[:, c].unsqueeze(0).clone(),
                    )
                )
            else:
                a, e = mf.page_span(p, s.page_size, n)
                parts.append(Part(keys[:, :, a:e].clone(), values[:, :, a:e].clone(), None))
        self.path = self.path_cls.from_parts(parts, s.page_size)
        self.manifest = m
        self._keys = self._values = None  # the dense prefill tensors are released here
        self.obs_queries = None
        return self.path.nbytes()


def _dense_nbytes(layer: DynamicLayer) -> int:
    return nbytes(layer.keys) + nbytes(layer.values)


class TieredCache(Cache):
    """Dense layers outside the band, :class:`TieredLayer` inside; ``compress()`` runs after prefill."""

    def __init__(
        self,
        model_config: PretrainedConfig,
        setting: TieredSetting,
        decode_path: str = "densify",
        forced_phantom: dict[int, Iterable[int]] | None = None,
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
        self.band = setting.layers(num_layers)
        forced = forced_phantom or {}
        unknown = sorted(set(forced) - set(self.band))
        if unknown:
            raise ValueError(f"forced_phantom names layers {unknown} outside the band {self.band}")
        layers = [
            TieredLayer(i, setting, decode_path, forced.get(i, ())) if i in self.band else DynamicLayer()
            for i in range(num_layers)
        ]
        super().__init__(layers=layers)
        self.compress_s: float | None = None
        self.prompt_logical_tokens: int | None = None
        self.prompt_stored_tokens: int | None = None
        self.prefill_peak_bytes: int | None = None

    def tiered_layers(self) -> list[TieredLayer]:
        return [layer for layer in self.layers if isinstance(layer, TieredLayer)]

    def compress(self, _cache: Cache | None = None) -> None:
        """Compress every band layer (usable as ``greedy(after_prefill=cache.compress)``).

        Records the prompt's logical/stored token counts and the cache bytes' high-water mark during
        compression: all dense prefill K/V, with each layer's new pages built before its dense K/V go.
        """
        t0 = time.perf_counter()
        live = sum(_dense_nbytes(layer) for layer in self.layers)
        peak = live
        logical = stored = 0
        for layer in self.layers:
            n = layer.get_seq_length()
            logical += n
            if isinstance(layer, TieredLayer):
                dense = _dense_nbytes(layer)
                built = layer.compress()
                peak = max(peak, live + built)
                live += built - dense
                stored += layer.manifest.stored_tokens
            else:
                stored += n
        self.compress_s = time.perf_counter() - t0
        self.prompt_logical_tokens = logical
        self.prompt_stored_tokens = stored
        self.prefill_peak_bytes = peak

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
        layer's ``torch.cat`` growth (old and new keys coexist for a moment)."""
        out = 0
        for layer in self.layers:
            if isinstance(layer, TieredLayer) and layer.path is not None:
                out = max(out, layer.path.max_transient_bytes)
            else:
                out = max(out, nbytes(layer.keys))
        return out
