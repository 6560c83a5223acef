"""``BCRCache``: SGLang's prefix-cache contract on top of the block-hash-chain index.

The contract is SGLang 0.5.23's ``BasePrefixCache`` (``sglang/srt/mem_cache/base_prefix_cache.py``):
abstract ``reset`` (l.442), ``match_prefix`` (l.446), ``checkpoint(req, *, up_to)`` (l.487),
``evict`` (l.515), ``inc_lock_ref`` / ``dec_lock_ref`` (l.541/545), plus what the scheduler reads
off a live cache: ``insert``, ``path_device_indices`` (l.558, used by ``prefix_device_indices``),
``evictable_size`` / ``protected_size`` (its leak check asserts available + evictable + protected
== total), ``root_node`` and ``dfs_weight_order``.  ``checkpoint`` follows ``RadixCache.checkpoint``
(``radix_cache.py:510-543``): insert the page-aligned key, free the request's copies of blocks that
were already cached, point the row at the tree's slots, move the lock, advance
``cache_protected_len``.  Like ``RadixCache.insert`` (``radix_cache.py:428``), ``insert`` returns
the already-cached length and frees nothing.

Storage: one page id per block (the slot of the block's first token divided by the page size --
SGLang's paged allocators hand out whole pages of consecutive slots, ``allocator/paged.py:181-202``),
kept once per run (on CPU a list for a short run, else a numpy array; on a GPU allocator a tensor
there), never a cloned slot tensor per block.  Slot indices are rebuilt from page ids when a path is
read.

A request's chain state is the block it holds locked (``req.last_node``): its key is stored, so a
checkpoint resumes the walk there and hashes only the blocks the request added since.
"""

from __future__ import annotations

import dataclasses
import time
from array import array
from typing import Any

import numpy as np
import torch
from sglang.srt.mem_cache.base_prefix_cache import (
    BasePrefixCache,
    DecLockRefParams,
    DecLockRefResult,
    EvictParams,
    EvictResult,
    IncLockRefResult,
    InsertParams,
    InsertResult,
    MatchPrefixParams,
    MatchResult,
    _dfs_weight_order,
)
from sglang.srt.mem_cache.cache_init_params import CacheInitParams

from bcr.prefix.chain import ROOT, TOKEN_BYTES, Block, ChainHasher, ChainIndex, Run

SMALL_RUN = 32  # a run of at most this many blocks keeps its page ids as a list (CPU)

BIGRAM_ERROR = (
    "bcr: EAGLE speculative decoding keys the cache by token bigrams (RadixKey.is_bigram); the "
    "block-hash chain keys plain tokens only. Serve EAGLE with the default cache or legacy_radix."
)


@dataclasses.dataclass
class BCRInsertParams(InsertParams):
    """``InsertParams`` plus the key's token bytes and a held block to resume the walk from."""

    token_bytes: bytes | None = dataclasses.field(default=None, kw_only=True)
    start: Block = dataclasses.field(default=ROOT, kw_only=True)


def token_bytes(ids: Any, n: int) -> bytes:
    """At least the first ``n`` token ids as little-endian int64 bytes (one copy for ``array('q')``).

    Readers index by block, so a few trailing tokens past ``n`` do no harm and save a slice.
    """
    if isinstance(ids, array) and ids.itemsize == TOKEN_BYTES and ids.typecode in "ql":
        if len(ids) - n <= 64:
            return ids.tobytes()
        # Release the exports at once: an array with a live memoryview cannot be extended, and
        # Req.refresh_fill_ids extends full_untruncated_fill_ids in place (schedule_batch.py:1672).
        with memoryview(ids) as mv, mv.cast("B") as raw:
            return raw[: n * TOKEN_BYTES].tobytes()
    return np.asarray(ids[:n], dtype=np.int64).tobytes()


class _PathNode:
    """Node of the tree induced by a set of block handles (for ``dfs_weight_order``)."""

    __slots__ = ("children",)

    def __init__(self) -> None:
        self.children: dict[Any, _PathNode] = {}


class BCRCache(BasePrefixCache):
    """Exact-prefix KV cache keyed by a block-hash chain (see :mod:`bcr.prefix.chain`)."""

    def __init__(
        self,
        params: CacheInitParams,
        *,
        hasher: ChainHasher | None = None,
        verify_pages: bool = False,
        numpy_pages: bool | None = None,
    ):
        if params.is_eagle:
            raise ValueError(BIGRAM_ERROR)
        if not params.disable and params.eviction_policy.lower() != "lru":
            raise ValueError(f"bcr: only LRU eviction is implemented, got {params.eviction_policy!r}")
        if params.enable_kv_cache_events:
            raise ValueError("bcr: KV cache events are not implemented; drop --enable-kv-cache-events")
        self.disable = params.disable
        self.req_to_token_pool = params.req_to_token_pool
        self.token_to_kv_pool_allocator = params.token_to_kv_pool_allocator
        self.page_size = params.page_size
        self.is_eagle = False
        self.eviction_policy = "lru"
        self.sliding_window_size = None
        self.verify_pages = verify_pages
        self.kv_events = None
        allocator = self.token_to_kv_pool_allocator
        dev = getattr(allocator, "device", "cpu") if allocator is not None else "cpu"
        self.device = torch.device(dev) if isinstance(dev, str | torch.device) else torch.device("cpu")
        if params.enable_metrics:
            self.init_metrics_collector()
        self.hasher = hasher if hasher is not None else ChainHasher()
        self._ns_plain = self.hasher.namespace(None, None)
        self.index = ChainIndex(self.page_size, self.hasher)
        # Page ids live in numpy (lists for short runs) on CPU: small numpy ops cost a fraction of
        # torch's dispatch.  On a device they stay tensors there.  Tests force either way.
        self._np = self.device.type == "cpu" if numpy_pages is None else numpy_pages
        if self._np and self.device.type != "cpu":
            raise ValueError("bcr: numpy page ids need a CPU allocator")
        self._arange = torch.arange(self.page_size, dtype=torch.int64, device=self.device)
        self._arange_np = np.arange(self.page_size, dtype=np.int64)
        self._tile = np.tile(self._arange_np, 1024)
        self._table: Any = None
        self._table_np: Any = None
        self._empty = torch.empty((0,), dtype=torch.int64, device=self.device)
        self.reset()

    # --- BasePrefixCache: state ------------------------------------------------------------------

    def reset(self) -> None:
        self.index.reset()
        self._empty_match = MatchResult(
            device_prefix_len=0, last_device_node=ROOT, last_host_node=ROOT, best_match_node=ROOT
        )

    @property
    def root_node(self) -> Block:
        return ROOT

    def supports_prefix_sharing(self) -> bool:
        return not self.disable

    def evictable_size(self) -> int:
        return self.index.evictable * self.page_size

    def protected_size(self) -> int:
        return self.index.protected * self.page_size

    def total_size(self) -> int:
        return (self.index.evictable + self.index.protected) * self.page_size

    # --- page payloads ---------------------------------------------------------------------------

    def _row(self, req_pool_idx: int) -> Any:
        """A request's row of slot indices: a numpy view on CPU (no torch call), else the tensor row."""
        table = self.req_to_token_pool.req_to_token
        if not self._np:
            return table[req_pool_idx]
        if table is not self._table:  # the pool's tensor is allocated once; re-wrap if ever replaced
            self._table, self._table_np = table, table.numpy()
        return self._table_np[req_pool_idx]

    def _pages(self, value: torch.Tensor | np.ndarray, lo: int, hi: int) -> Any:
        """Page ids of blocks [lo, hi) from a row of slot indices (fresh, never a view of ``value``).

        On CPU a few pages become a list (no numpy call at all), more an int64 array; on a device,
        an int64 tensor there.
        """
        ps = self.page_size
        if self._np:
            arr = value if isinstance(value, np.ndarray) else value.numpy()  # shares the storage
            seg = arr[lo * ps : hi * ps]
            if hi - lo <= SMALL_RUN:
                pages: Any = seg.tolist() if ps == 1 else [s // ps for s in seg[::ps].tolist()]
            else:
                pages = seg[::ps].astype(np.int64)
                if ps > 1:
                    pages //= ps
        else:
            seg = value[lo * ps : hi * ps].to(torch.int64, copy=ps == 1)
            pages = torch.div(seg[::ps], ps, rounding_mode="floor") if ps > 1 else seg
        if self.verify_pages and ps > 1:
            expect = self._expand(np.asarray(pages, dtype=np.int64) if self._np else pages)
            same = np.array_equal(seg, expect) if self._np else torch.equal(seg, expect)
            if not same:
                raise ValueError("bcr: KV slots of a block are not one whole page of consecutive slots")
        return pages

    def _expand(self, pages: Any) -> Any:
        if self.page_size == 1:
            return pages
        ps = self.page_size
        if self._np:
            n = len(pages) * ps
            if len(self._tile) < n:  # offsets 0..ps-1 repeated, grown on demand
                self._tile = np.tile(self._arange_np, max(n // ps, 2 * len(self._tile) // ps))
            return np.repeat(pages * ps, ps) + self._tile[:n]  # faster than broadcasting a narrow axis
        return (pages.unsqueeze(1) * ps + self._arange).view(-1)

    def _slots(self, pages: Any) -> torch.Tensor:
        """Slot indices of whole pages as an int64 tensor on the allocator's device."""
        out = self._expand(pages)
        return torch.from_numpy(out) if self._np else out

    def _cat(self, parts: list[Any]) -> Any:
        """One int64 array (tensor off CPU) of the page-id payloads ``parts`` (lists or arrays)."""
        if not self._np:
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        if len(parts) == 1:
            return np.asarray(parts[0], dtype=np.int64)
        return np.concatenate(parts, dtype=np.int64)

    # --- BasePrefixCache: lookup and insert ------------------------------------------------------

    def match_prefix(self, params: MatchPrefixParams) -> MatchResult:
        key = params.key
        if key.is_bigram:
            raise ValueError(BIGRAM_ERROR)
        if self.disable:
            return self._empty_match
        ps = self.page_size
        ids = key.token_ids
        n = len(ids)
        if key.limit is not None and key.limit < n:  # RadixKey.limit caps the key (radix_cache.py:84-88)
            n = key.limit
        nb = n // ps
        if nb == 0:
            return self._empty_match
        if key.extra_key is None and key.cache_salt is None:
            ns = self._ns_plain
        else:
            ns = self.hasher.namespace(key.extra_key, key.cache_salt)
        index = self.index
        k, block = index.longest(token_bytes(ids, nb * ps), nb, ns)
        run = block.run
        if run is None:
            return self._empty_match
        index._clock += 1
        run.times[block.idx] = index._clock  # LRU stamp on the deepest matched block
        return MatchResult(k * ps, block, block, block)  # device_prefix_len, last device/host/best node

    def touch_prefix(self, key: Any) -> None:
        if not self.disable and not key.is_bigram:
            self.match_prefix(MatchPrefixParams(key=key))

    def insert(self, params: InsertParams) -> InsertResult:
        """Cache the page-aligned key; the tree owns ``value[prefix_len : total_len]`` afterwards.

        ``total_len`` is the full aligned key unless a hash collision stopped the insert early.
        """
        if self.disable:
            return InsertResult(prefix_len=0)
        key = params.key
        if key.is_bigram:
            raise ValueError(BIGRAM_ERROR)
        ps = self.page_size
        nb = len(key) // ps
        value = params.value
        if value is None:  # RadixCache's test fallback: token ids stand in for slots (radix_cache.py:442)
            value = torch.tensor(key.token_ids[: nb * ps], dtype=torch.int64)
        ns = self.hasher.namespace(key.extra_key, key.cache_salt)
        tokens = getattr(params, "token_bytes", None)
        if tokens is None:
            tokens = token_bytes(key.token_ids, nb * ps)
        start = getattr(params, "start", ROOT)
        k, last = self.index.insert(tokens, nb, ns, lambda lo, hi: self._pages(value, lo, hi), start)
        return InsertResult(prefix_len=k * ps, total_len=last.depth * ps, last_device_node=last)

    def checkpoint(self, req: Any, *, up_to: int, **kwargs: Any) -> None:
        """Insert the request's KV up to ``up_to`` and hand the cached part to the tree.

        Mirrors ``RadixCache.checkpoint`` (radix_cache.py:510-543) without its prompt split (blocks
        need none).  The new lock is taken before the old one is dropped so the shared path is not
        unprotected and re-protected on every checkpoint.
        """
        if self.disable:
            return
        kv = req.kv
        if kv.swa_evict_floor > 0:
            raise ValueError("bcr: sliding-window (SWA) models are not supported")
        ps = self.page_size
        nb = up_to // ps
        salt = req.cache_salt or None  # RadixKey normalises an empty salt the same way (radix_cache.py:77)
        tokens = token_bytes(req.full_untruncated_fill_ids, nb * ps)
        held = req.last_node if req.lock is not None else ROOT
        if held.run is not None and (held.idx >= held.run.live or held.depth * ps > nb * ps):
            held = ROOT  # not a live block on this key: walk from the root
        row = self._row(kv.req_pool_idx)
        result = self.insert(
            BCRInsertParams(
                key=_KeyView(nb * ps, req.extra_key, salt),
                value=row,
                inserted_len=kv.cache_inserted_len,
                token_bytes=tokens,
                start=held,
            )
        )
        protected = kv.cache_protected_len
        prefix, last = result.prefix_len, result.last_device_node
        if prefix < protected:
            raise RuntimeError(f"bcr: the request's locked prefix ({protected}) left the cache ({prefix})")
        if prefix > protected:
            # Blocks cached by someone else since this request matched: free its copies (page-exact,
            # as RadixCache._insert_cache does at radix_cache.py:504) and read the tree's slots.
            mine = self.req_to_token_pool.req_to_token[kv.req_pool_idx, protected:prefix]
            self.token_to_kv_pool_allocator.free_segment(mine, start_pos=protected)
            path = self.path_device_indices(last)
            self.req_to_token_pool.write((kv.req_pool_idx, slice(protected, prefix)), path[protected:prefix])
        kv.cache_inserted_len = max(kv.cache_inserted_len, nb * ps)
        kv.cache_protected_len = result.total_len
        old = req.lock
        req.lock = self.lock(last)
        self.unlock(old)
        req.last_node = last

    # --- BasePrefixCache: eviction and locks -----------------------------------------------------

    def evict(self, params: EvictParams) -> EvictResult:
        if self.disable or params.num_tokens <= 0:
            return EvictResult()
        start = time.perf_counter()
        ps = self.page_size
        freed = self.index.evict(-(-params.num_tokens // ps))
        if not freed:
            return EvictResult()
        pages = self._cat([run.pages[lo:hi] for run, lo, hi in freed])
        allocator = self.token_to_kv_pool_allocator
        if hasattr(allocator, "free_page_ids"):  # allocator/paged.py:359, allocator/token.py:77
            allocator.free_page_ids(torch.from_numpy(pages) if self._np else pages)
        else:
            allocator.free(self._slots(pages))
        n = len(pages) * ps
        self.update_eviction_metrics(n, start)
        return EvictResult(num_tokens_evicted=n)

    def inc_lock_ref(self, node: Block) -> IncLockRefResult:
        if self.disable:
            return IncLockRefResult(delta=0)
        return IncLockRefResult(delta=-self.index.lock(node) * self.page_size)

    def dec_lock_ref(self, node: Block, params: DecLockRefParams | None = None) -> DecLockRefResult:
        if self.disable:
            return DecLockRefResult(delta=0)
        return DecLockRefResult(delta=self.index.unlock(node) * self.page_size)

    # --- paths and diagnostics -------------------------------------------------------------------

    def path_device_indices(self, node: Block) -> torch.Tensor:
        if node.run is None:
            return self._empty
        segs = self.index.path(node)
        pages = self._cat([run.pages[:n] for run, n in segs])
        if self.page_size == 1 and len(segs) == 1:
            pages = pages.copy() if self._np else pages.clone()  # never hand out the tree's own array
        return self._slots(pages)

    def all_values_flatten(self) -> torch.Tensor:
        parts = [run.pages[:live] for run, live in self.index.live_ranges()]
        return self._slots(self._cat(parts)) if parts else self._empty

    def sanity_check(self) -> None:
        self.index.sanity_check()

    def pretty_print(self) -> None:
        runs = sorted(self.index.runs, key=lambda r: r.start)
        for run in runs:
            print(
                f"run start={run.start} live={run.live} protected={run.protected} "
                f"branches={dict(run.branches)} pins={dict(run.pins)}"
            )
        print(
            f"#tokens: {self.total_size()} (evictable {self.evictable_size()}, protected {self.protected_size()})"
        )

    def dfs_weight_order(self, node_handles: Any) -> list[int]:
        """SGLang's DFS-weight order (base_prefix_cache.py:347) over the tree the handles induce.

        Points are the handles' blocks and the blocks their runs hang from; a point's parent is
        the nearest point above it on its path.
        """
        points: dict[Run, set[int]] = {}
        for handle in node_handles:
            run, idx = handle
            while run is not None:
                have = points.get(run)
                if have is not None:
                    have.add(idx)
                    break
                points[run] = {idx}
                run, idx = run.parent, run.pidx
        root = _PathNode()
        nodes: dict[tuple[Run, int], _PathNode] = {}
        for run, idxs in sorted(points.items(), key=lambda item: item[0].start):
            above = root if run.parent is None else nodes[run.parent, run.pidx]
            for idx in sorted(idxs):
                node = _PathNode()
                above.children[(id(run), idx)] = node
                nodes[(run, idx)] = node
                above = node
        return _dfs_weight_order(
            root, list(node_handles), lambda h: root if h.run is None else nodes[(h.run, h.idx)]
        )


class _KeyView:
    """The part of a RadixKey that :meth:`BCRCache.insert` reads when bytes and keys come along."""

    __slots__ = ("cache_salt", "extra_key", "is_bigram", "n", "token_ids")

    def __init__(self, n: int, extra_key: Any, cache_salt: Any):
        self.n = n
        self.extra_key = extra_key
        self.cache_salt = cache_salt or None
        self.is_bigram = False
        self.token_ids = None

    def __len__(self) -> int:
        return self.n
