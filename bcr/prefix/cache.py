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

Storage: each run keeps its blocks' KV slot indices as one int64 array (numpy on CPU, a tensor on
the allocator's device), copied once from the row at insert, never one tensor per block; a path's
slots are the concatenation of its runs' slices (what ``RadixCache`` does with its node values), and
eviction frees page ids read off the freed slices (SGLang's paged allocators hand out whole pages of
consecutive slots, ``allocator/paged.py:181-202``; ``verify_pages`` checks that).

Keys are read off the caller's array through a ``memoryview`` (``token_view``): a lookup copies no
token, an insert copies only its new blocks.  A request's chain state is the block it holds locked
(``req.last_node``): a checkpoint resumes the walk there, and since nothing else hangs from the end
of the request's own run, a prefill chunk's new blocks extend that run (one run per prompt however
many chunks, one slice per path); the final insert of a finished request starts a run of its own.  A plain caller has no such state; its ``insert`` right after its own ``match_prefix`` of
the same array reuses that walk when nothing changed in between and the tokens still agree
(``_resume``).
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

BIGRAM_ERROR = (
    "bcr: EAGLE speculative decoding keys the cache by token bigrams (RadixKey.is_bigram); the "
    "block-hash chain keys plain tokens only. Serve EAGLE with the default cache or legacy_radix."
)


@dataclasses.dataclass
class BCRInsertParams(InsertParams):
    """``InsertParams`` plus the key's token bytes, a held block to resume the walk from, and
    whether the new blocks may extend the run the walk ends on (:meth:`ChainIndex.insert`)."""

    token_bytes: Any = dataclasses.field(default=None, kw_only=True)
    start: Block = dataclasses.field(default=ROOT, kw_only=True)
    extend: bool = dataclasses.field(default=True, kw_only=True)


def token_bytes(ids: Any, n: int) -> bytes:
    """The first ``n`` token ids as little-endian int64 bytes (a copy)."""
    if isinstance(ids, array) and ids.itemsize == TOKEN_BYTES and ids.typecode in "ql":
        with memoryview(ids) as mv, mv.cast("B") as raw:
            return raw[: n * TOKEN_BYTES].tobytes()
    return np.asarray(ids[:n], dtype=np.int64).tobytes()


def token_view(ids: Any, n: int) -> Any:
    """At least the first ``n`` token ids as a byte buffer, without a copy for ``array('q')``.

    The caller must hand the result to :func:`release` as soon as it is done: an array with a live
    export cannot be extended, and ``Req.refresh_fill_ids`` extends ``full_untruncated_fill_ids``
    in place (schedule_batch.py:1672).  Other sequences are copied into ``bytes``.
    """
    if isinstance(ids, array) and ids.itemsize == TOKEN_BYTES and ids.typecode in "ql":
        return memoryview(ids).cast("B")  # the uncast view dies here; the cast one holds the export
    return np.asarray(ids[:n], dtype=np.int64).tobytes()


def release(view: Any) -> None:
    """Drop the array export a :func:`token_view` holds (nothing for ``bytes``)."""
    if type(view) is memoryview:
        view.release()


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
        walk: str = "native",
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
        self.index = ChainIndex(self.page_size, self.hasher, walk)  # walk: C, or the Python reference
        # Page ids live in numpy (lists for short runs) on CPU: small numpy ops cost a fraction of
        # torch's dispatch.  On a device they stay tensors there.  Tests force either way.
        self._np = self.device.type == "cpu" if numpy_pages is None else numpy_pages
        if self._np and self.device.type != "cpu":
            raise ValueError("bcr: numpy page ids need a CPU allocator")
        self._arange = torch.arange(self.page_size, dtype=torch.int64, device=self.device)
        self._arange_np = np.arange(self.page_size, dtype=np.int64)
        self._table: Any = None
        self._table_np: Any = None
        self._empty = torch.empty((0,), dtype=torch.int64, device=self.device)
        self.reset()

    # --- BasePrefixCache: state ------------------------------------------------------------------

    def reset(self) -> None:
        self.index.reset()
        self._memo: tuple | None = None  # the last match: (ids, ns, version, k, block, next block)
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

    def _take(self, value: torch.Tensor | np.ndarray, lo: int, hi: int) -> Any:
        """KV slots of blocks [lo, hi) from a row of slot indices: the run's own int64 copy.

        A numpy array on CPU (no torch dispatch), else a tensor on the allocator's device.  With
        ``verify_pages`` each block must be one whole page of consecutive slots.
        """
        ps = self.page_size
        if self._np:
            arr = value if isinstance(value, np.ndarray) else value.numpy()  # shares the storage
            slots = arr[lo * ps : hi * ps].astype(np.int64)  # astype copies
        else:
            slots = value[lo * ps : hi * ps].to(torch.int64, copy=True)
        if self.verify_pages and ps > 1:
            if self._np:
                blocks = slots.reshape(-1, ps)
                whole = (blocks[:, 0] % ps == 0).all() and (blocks - blocks[:, :1] == self._arange_np).all()
            else:
                blocks = slots.view(-1, ps)
                whole = bool(
                    (blocks[:, 0] % ps == 0).all() and (blocks - blocks[:, :1] == self._arange).all()
                )
            if not whole:
                raise ValueError("bcr: KV slots of a block are not one whole page of consecutive slots")
        return slots

    def _extend(self, old: Any, new: Any) -> Any:
        """A run's slots followed by ``new``: in place within a doubling buffer on CPU (amortised
        O(new)), a concatenation on a device."""
        if not self._np:
            return torch.cat([old, new])
        n0, n = len(old), len(old) + len(new)
        buf = old.base
        if not (isinstance(buf, np.ndarray) and len(buf) >= n and buf.ctypes.data == old.ctypes.data):
            buf = np.empty(2 * n, dtype=np.int64)
            buf[:n0] = old
        buf[n0:n] = new
        return buf[:n]

    def _tensor(self, slots: Any) -> torch.Tensor:
        return torch.from_numpy(slots) if self._np else slots

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
        view = token_view(ids, nb * ps)
        try:
            k, block = index.longest(view, nb, ns)
            if params.req is None:  # a plain caller: its insert may reuse this walk (see _resume)
                bb = index.block_bytes
                nxt = view[k * bb : (k + 1) * bb].tobytes() if k < nb else None  # where it stopped
                self._memo = (ids, ns, index.version, k, block, nxt)
        finally:
            release(view)
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
        if key.extra_key is None and key.cache_salt is None:
            ns = self._ns_plain
        else:
            ns = self.hasher.namespace(key.extra_key, key.cache_salt)
        tokens = getattr(params, "token_bytes", None)
        start = getattr(params, "start", ROOT)
        view = found = None
        if tokens is None:
            view = tokens = token_view(key.token_ids, nb * ps)
            memo = self._memo
            if memo is not None and memo[0] is key.token_ids and start is ROOT:
                start, found = self._resume(memo, tokens, nb, ns)
        try:
            extend = self._extend if getattr(params, "extend", True) else None
            k, last = self.index.insert(
                tokens, nb, ns, lambda lo, hi: self._take(value, lo, hi), start, extend, found
            )
        finally:
            if view is not None:
                release(view)
        return InsertResult(prefix_len=k * ps, total_len=last.depth * ps, last_device_node=last)

    def _resume(self, memo: tuple, tokens: Any, nb: int, ns: int) -> tuple[Block, tuple[int, Block] | None]:
        """What a plain insert can take from the caller's last match: (where to walk from, or the
        walk's answer itself).

        Only if the insert's key is the very array that match read and nothing was inserted or
        evicted since; and only as far as the key's tokens still equal the matched path (one
        ``memcmp`` per run: the array may have been changed in place).  If the key also holds the
        block the match stopped at, the walk would stop there again: its answer is the match's.
        """
        _, mns, version, k, block, nxt = memo
        if mns != ns or version != self.index.version or k > nb:
            return ROOT, None
        bb = self.index.block_bytes
        if block.run is not None:
            for run, n in self.index.path(block):
                at = run.start * bb
                if not run.tokens.startswith(tokens[at : at + n * bb]):
                    return ROOT, None
        if k == nb:
            return block, (k, block)
        if nxt is not None:
            here = tokens[k * bb : (k + 1) * bb]
            if len(here) == bb and nxt.startswith(here):
                return block, (k, block)
        return block, None

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
        held = req.last_node if req.lock is not None else ROOT
        if held.run is not None and (held.idx >= held.run.live or held.depth * ps > nb * ps):
            held = ROOT  # not a live block on this key: walk from the root
        row = self._row(kv.req_pool_idx)
        tokens = token_view(req.full_untruncated_fill_ids, nb * ps)
        try:
            result = self.insert(
                BCRInsertParams(
                    key=_KeyView(nb * ps, req.extra_key, salt),
                    value=row,
                    inserted_len=kv.cache_inserted_len,
                    token_bytes=tokens,
                    start=held,
                    # A prefill chunk continues the request's own run; the final insert (question
                    # and answer, after a prefix others share) starts its own, so the shared
                    # prefix keeps ending where later requests branch off.
                    extend=not req.finished(),
                )
            )
        finally:
            release(tokens)
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
        slots = self._cat([run.pages[lo * ps : hi * ps] for run, lo, hi in freed])
        allocator = self.token_to_kv_pool_allocator
        if hasattr(allocator, "free_page_ids"):  # allocator/paged.py:359, allocator/token.py:77
            allocator.free_page_ids(self._tensor(slots[::ps] // ps if ps > 1 else slots))
        else:
            allocator.free(self._tensor(slots))
        n = len(slots)
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

    def prefix_device_indices(self, req: Any) -> torch.Tensor:
        """``BasePrefixCache.prefix_device_indices`` without its slice: the match node's path is the
        matched prefix exactly."""
        node = req.last_node
        if node.depth * self.page_size == req.prefix_len:
            return self.path_device_indices(node)
        return super().prefix_device_indices(req)

    def path_device_indices(self, node: Block) -> torch.Tensor:
        """The slot indices of the path: a view of the run's own array when the path is one run,
        else the runs' slices concatenated.

        A view is what SGLang's contract asks for (``base_prefix_cache.py:558-560``: the indices
        are "valid until the next allocation or eviction unless the path is locked") and what
        every caller in SGLang does with them (read, or write into a request's row).  It stays
        right: a run's slots are written once -- an extension writes past every view's end
        (:meth:`_extend`), an eviction only shortens ``live`` -- so a view never changes under its
        holder.  Copying costs RadixCache's ``torch.cat`` for nothing.
        """
        run, idx = node
        if run is None:
            return self._empty
        ps = self.page_size
        parent = run.parent
        if parent is None:  # one run: the common case
            part = run.pages[: (idx + 1) * ps]
            return torch.from_numpy(part) if self._np else part
        parts = [run.pages[: (idx + 1) * ps]]
        while parent is not None:
            parts.append(parent.pages[: (run.pidx + 1) * ps])
            run, parent = parent, parent.parent
        parts.reverse()
        return torch.from_numpy(np.concatenate(parts)) if self._np else torch.cat(parts)

    def all_values_flatten(self) -> torch.Tensor:
        ps = self.page_size
        parts = [run.pages[: live * ps] for run, live in self.index.live_ranges()]
        return self._tensor(self._cat(parts)) if parts else self._empty

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
