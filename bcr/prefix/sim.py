"""Drive SGLang prefix caches through request lifecycles on CPU, the way the scheduler does, with no model.

Every arm (``bcr``, SGLang's Python ``RadixCache``, ``UnifiedRadixCache`` on its Python or Rust core)
gets the same real SGLang objects -- ``Req``, ``ReqToTokenPool``, ``TokenToKVPoolAllocator`` /
``PagedTokenToKVPoolAllocator`` on ``device="cpu"`` (or a GPU) -- and the calls the scheduler makes:

* match: ``match_kv_cache`` (``sglang/srt/mem_cache/common.py:221``) with the ``max_prefix_len`` cap
  of ``Req._compute_max_prefix_len`` (``schedule_batch.py:1766``), then ``lock`` of the match node
  (``schedule_policy.py:1690``) and ``prefix_device_indices`` for the row (``allocation.py:371``);
* prefill in chunks, each chunk but the last followed by ``checkpoint_kv_cache`` (``common.py:271``);
* decode one token at a time (the last output token never gets KV);
* finish: ``release_kv_cache(req, cache, checkpoint=True)`` (``common.py:400``).

A timed engine also sums each request's cache calls (match, lock, path, prefill checkpoints,
release) into its ``request`` total.  With :class:`ModelHooks` the same calls serve a real model
(:mod:`bcr.serving.local`): it reads the matched prefix's K/V at the slots the cache returned and
computes and writes every position the engine gives slots, and :meth:`Engine.emit` feeds back the
tokens it chooses.  :meth:`Engine.plain` is the other caller: plain
``match_prefix`` / ``path_device_indices`` / ``insert`` calls without request state.

Slots are allocated like ``alloc_extend``: a partial last page is continued slot by slot, new
tokens get whole pages; a failed allocation evicts through ``evict_from_tree_cache`` first.  An
optional shadow records which request wrote each slot at which position, so a test can prove every
cache hit is an exact prefix, and ``accounting()`` checks available + evictable + protected + what
running requests hold == pool size after any step.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from array import array
from collections.abc import Callable, Generator, Iterable
from typing import Any, Protocol

import numpy as np
import torch

from bcr.contracts import ARMS
from bcr.prefix import arms


@functools.cache
def _sglang() -> Any:
    """Import SGLang's cache stack once (the import takes seconds on CPU)."""
    import warnings

    warnings.filterwarnings("ignore", message="Only CUDA")
    from sglang.srt.managers import schedule_batch
    from sglang.srt.mem_cache import common
    from sglang.srt.server_args import ServerArgs, set_global_server_args_for_scheduler

    return schedule_batch, common, ServerArgs, set_global_server_args_for_scheduler


def configure_sglang(page_size: int) -> None:
    """Publish the global server args ``Req`` and the allocators read (as SGLang's own tests do)."""
    _, _, server_args_cls, publish = _sglang()
    publish(server_args_cls(model_path="dummy", page_size=page_size))


@dataclasses.dataclass
class Pools:
    """The memory pools one cache runs on; ``total`` is the allocator's capacity in tokens."""

    req_to_token_pool: Any
    allocator: Any
    page_size: int

    @property
    def total(self) -> int:
        return self.allocator.size // self.page_size * self.page_size


def make_pools(
    page_size: int,
    kv_tokens: int,
    max_reqs: int,
    max_context: int,
    need_sort: bool = True,
    device: str = "cpu",
    kvcache: Any = None,
) -> Pools:
    """Pools on ``device``; ``need_sort`` makes the free list order canonical (sorted on demand).

    ``kvcache``: the token-to-KV pool the slots index (a model engine's ``MHATokenToKVPool``);
    None for a replay, where slots hold nothing.
    """
    from sglang.srt.mem_cache.allocator import PagedTokenToKVPoolAllocator, TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool

    kv_tokens = -(-kv_tokens // page_size) * page_size
    r2t = ReqToTokenPool(size=max_reqs, max_context_len=max_context, device=device, enable_memory_saver=False)
    if page_size == 1:
        alloc = TokenToKVPoolAllocator(
            size=kv_tokens, dtype=torch.float16, device=device, kvcache=kvcache, need_sort=need_sort
        )
    else:
        alloc = PagedTokenToKVPoolAllocator(
            size=kv_tokens,
            page_size=page_size,
            dtype=torch.float16,
            device=device,
            kvcache=kvcache,
            need_sort=need_sort,
        )
    return Pools(r2t, alloc, page_size)


def make_cache(
    arm: str,
    pools: Pools,
    *,
    hasher: Any = None,
    verify_pages: bool = False,
    numpy_pages: bool | None = None,
    walk: str = "native",
) -> Any:
    """One arm on ``pools``.  The unified arms pin their tree core (tree_core_registry.py:124-131);
    ``hasher``, ``verify_pages``, ``numpy_pages`` and ``walk`` go to ``bcr`` (:class:`BCRCache`)."""
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams

    spec = arms.get(arm)
    core = spec.tree_core
    params = CacheInitParams(
        disable=False,
        req_to_token_pool=pools.req_to_token_pool,
        token_to_kv_pool_allocator=pools.allocator,
        page_size=pools.page_size,
        tree_core_backend=core,
    )
    if spec.backend == "bcr":
        from bcr.prefix.cache import BCRCache

        return BCRCache(params, hasher=hasher, verify_pages=verify_pages, numpy_pages=numpy_pages, walk=walk)
    if spec.backend == "legacy_radix":
        from sglang.srt.mem_cache.radix_cache import RadixCache

        return RadixCache(params)
    if core is not None:
        from sglang.srt.mem_cache.unified_cache.component_type import ComponentType
        from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

        params.tree_components = (ComponentType.FULL,)  # registry.py:165 for a plain model
        cache = UnifiedRadixCache(params)
        if cache._tree_core_backend != core:
            raise RuntimeError(f"{arm}: SGLang fell back to the {cache._tree_core_backend!r} tree core")
        return cache
    raise ValueError(f"unknown arm {arm!r}; choose from {ARMS}")


CLOCKS: dict[str, Callable[[], float]] = {"thread_cpu": time.thread_time, "wall": time.perf_counter}


class OpTimer:
    """Per-op times in µs; ``insert`` is summed per checkpoint (RadixCache inserts twice per call).

    The default clock is the calling thread's CPU time: what an op costs the scheduler's thread,
    untouched by other processes preempting it on a shared machine (wall time is available too).
    """

    def __init__(self, clock: str = "thread_cpu") -> None:
        self.clock_name = clock
        self.clock = CLOCKS[clock]
        self.samples: dict[str, list[float]] = {}
        self.tokens: dict[str, int] = {}
        self._insert_acc: float | None = None

    def add(self, op: str, seconds: float, tokens: int = 0) -> None:
        self.samples.setdefault(op, []).append(seconds * 1e6)
        self.tokens[op] = self.tokens.get(op, 0) + tokens

    def instrument(self, cache: Any) -> None:
        """Wrap the cache instance's ``insert`` and ``checkpoint`` (the scheduler calls the latter)."""
        insert, checkpoint, clock = cache.insert, cache.checkpoint, self.clock

        def timed_insert(params: Any) -> Any:
            t0 = clock()
            out = insert(params)
            if self._insert_acc is not None:
                self._insert_acc += clock() - t0
            return out

        def timed_checkpoint(req: Any, *, up_to: int, **kw: Any) -> None:
            self._insert_acc = 0.0
            t0 = clock()
            checkpoint(req, up_to=up_to, **kw)
            self.add("checkpoint", clock() - t0, up_to)
            self.add("insert", self._insert_acc, up_to)
            self._insert_acc = None

        cache.insert = timed_insert
        cache.checkpoint = timed_checkpoint


@dataclasses.dataclass
class Running:
    """A request in flight and where its prefill stands."""

    req: Any
    prompt_len: int
    outputs: np.ndarray
    matched: int
    filled: int = 0
    decoded: int = 0
    cost: float = 0.0  # seconds the scheduler's thread spent in cache calls for this request


class ModelHooks(Protocol):
    """What a model does at the engine's slot events; a replay has none (its slots hold nothing)."""

    def load(self, run: Running, prefix: torch.Tensor) -> None:
        """The request matched ``prefix`` (slot ids of positions ``[0, run.matched)``): read its KV."""

    def extend(self, run: Running, start: int, end: int, slots: torch.Tensor) -> None:
        """Compute positions ``[start, end)`` of the request's tokens and write their KV at ``slots``."""


class Engine:
    """The scheduler's cache calls for requests in flight (any interleaving the caller chooses)."""

    def __init__(
        self,
        cache: Any,
        pools: Pools,
        *,
        chunk: int | None = None,
        timer: OpTimer | None = None,
        shadow: bool = False,
        model: ModelHooks | None = None,
    ):
        self.cache = cache
        self.pools = pools
        self.model = model
        self.ps = pools.page_size
        self.chunk = chunk
        self.timer = timer
        self.running: dict[str, Running] = {}
        self.shadow: np.ndarray | None = None
        if shadow:
            slots = pools.allocator.size + self.ps + 1
            self.shadow = np.full((slots, 2), -1, dtype=np.int64)  # slot -> (writer id, position)
            self.writers: list[np.ndarray] = []
            self._writer_of: dict[str, int] = {}
        self._seq = 0
        self.evicted_for_alloc = 0  # tokens the cache gave up because an allocation ran short
        self._sg = _sglang()
        self.clock = timer.clock if timer is not None else time.perf_counter
        from bcr.prefix.cache import BCRCache

        self._reports_total = isinstance(cache, BCRCache)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(
        self,
        prompt: Iterable[int],
        outputs: Iterable[int] | int,
        *,
        rid: str | None = None,
        extra_key: str | None = None,
        cache_salt: str | None = None,
    ) -> Running:
        """Match, lock, take a row and write the cached prefix into it.

        ``outputs``: the output tokens a replay feeds back, or how many a model will emit
        (:meth:`emit` fills them in).
        """
        schedule_batch, common = self._sg[0], self._sg[1]
        from sglang.srt.sampling.sampling_params import SamplingParams

        if isinstance(outputs, int):
            outputs = np.zeros(outputs, dtype=np.int64)
        else:
            outputs = np.asarray(list(outputs), dtype=np.int64)
        if len(outputs) < 1:
            raise ValueError("a request produces at least one output token")
        rid = rid or f"r{self._seq}"
        self._seq += 1
        if rid in self.running:
            raise ValueError(f"request id {rid!r} is already in flight")
        req = schedule_batch.Req(
            rid=rid,
            origin_input_text="",
            origin_input_ids=array("q", prompt),
            sampling_params=SamplingParams(temperature=0, max_new_tokens=len(outputs)),
            extra_key=extra_key,
            cache_salt=cache_salt,
        )
        req.refresh_fill_ids()
        fill = req.full_untruncated_fill_ids
        clock = self.clock
        t0 = clock()
        common.match_kv_cache(req, self.cache, fill, max_prefix_len=req._compute_max_prefix_len(len(fill)))
        t1 = clock()
        req.kv.cache_protected_len = req.prefix_len  # init_next_round_input (schedule_batch.py:1743)
        if self.pools.req_to_token_pool.alloc([req]) is None:
            raise RuntimeError("out of request rows")
        t2 = clock()
        req.lock = self.cache.lock(req.last_node)
        t3 = clock()
        prefix = self.cache.prefix_device_indices(req)
        t4 = clock()
        n = req.prefix_len
        if self.timer is not None:
            self.timer.add("match", t1 - t0, n)
            self.timer.add("lock", t3 - t2, n)
            self.timer.add("path", t4 - t3, n)
        self.pools.req_to_token_pool.write((req.kv.req_pool_idx, slice(0, n)), prefix)
        req.kv.kv_committed_len = req.kv.kv_allocated_len = n
        run = Running(req, len(req.origin_input_ids), outputs, matched=n, filled=n)
        run.cost = (t1 - t0) + (t4 - t2)
        if self.shadow is not None:
            self._writer_of[rid] = len(self.writers)
            self.writers.append(np.concatenate([np.asarray(req.origin_input_ids, dtype=np.int64), outputs]))
            self._check_hit(run, prefix)
        self.running[rid] = run
        if self.model is not None:
            self.model.load(run, prefix)
        return run

    def prefill(self, run: Running, *, all_chunks: bool = True) -> bool:
        """Compute one chunk (or all); checkpoint after every chunk that ends before the prompt does.

        Returns True once the prompt is done.
        """
        common = self._sg[1]
        while run.filled < run.prompt_len:
            end = run.prompt_len
            if self.chunk is not None and end - run.filled > self.chunk:
                end = (run.filled + self.chunk) // self.ps * self.ps  # page-aligned (schedule_policy.py:1670)
                if end <= run.filled:
                    end = run.filled + self.chunk
            run.req.extend_end = end
            self._extend(run, end)
            run.filled = end
            if end < run.prompt_len:
                t0 = self.clock()
                common.checkpoint_kv_cache(run.req, self.cache)
                run.cost += self.clock() - t0
            if not all_chunks:
                break
        return run.filled >= run.prompt_len

    def decode(self, run: Running, steps: int | None = None) -> bool:
        """Emit the trace's output tokens; every one but the last gets KV.  True when all are out."""
        left = len(run.outputs) - run.decoded
        steps = left if steps is None else min(steps, left)
        for _ in range(steps):
            self.emit(run, int(run.outputs[run.decoded]))
        return run.decoded >= len(run.outputs)

    def emit(self, run: Running, token: int) -> bool:
        """One output token (the trace's, or a model's choice): it gets KV -- the decode step that
        feeds it -- unless it is the last.  True when all are out."""
        req = run.req
        if run.decoded >= len(run.outputs):
            raise RuntimeError(f"{req.rid}: all {len(run.outputs)} output tokens are already out")
        run.outputs[run.decoded] = token
        req.output_ids.append(token)
        run.decoded += 1
        if run.decoded < len(run.outputs):
            self._extend(run, req.kv.kv_committed_len + 1)
        return run.decoded >= len(run.outputs)

    def finish(self, run: Running) -> None:
        """Release with checkpoint, as the scheduler does for a finished request."""
        schedule_batch, common = self._sg[0], self._sg[1]
        if run.filled < run.prompt_len or run.decoded < len(run.outputs):
            raise RuntimeError("finish() before the request's prefill and decode are done")
        req = run.req
        req.finished_reason = schedule_batch.FINISH_LENGTH(length=len(run.outputs))
        t0 = self.clock()
        common.release_kv_cache(req, self.cache, checkpoint=True)
        took = self.clock() - t0
        if self.timer is not None:
            self.timer.add("release", took, run.prompt_len + len(run.outputs) - 1)
            self.timer.add("request", run.cost + took, run.prompt_len + len(run.outputs))
        del self.running[req.rid]

    def serve(self, prompt: Iterable[int], outputs: Iterable[int], **kw: Any) -> int:
        """A whole lifecycle; returns the matched prefix length."""
        run = self.start(prompt, outputs, **kw)
        self.prefill(run)
        self.decode(run)
        self.finish(run)
        return run.matched

    def plain(self, tokens: Iterable[int], *, extra_key: str | None = None) -> int:
        """One caller's plain calls, no request state: match, read the hit's slots, insert the whole key.

        ``match_prefix(MatchPrefixParams(key=RadixKey(tokens)))``, ``path_device_indices`` of the
        match node, slots for the rest, then ``insert(InsertParams(key=RadixKey(tokens), value=slots))``
        -- the generic way a caller other than SGLang's scheduler uses a cache (SGLang's own tests
        do), with ``prev_prefix_len`` saying the first ``m`` slots are the tree's own.  The key is
        cut to whole pages; nothing is locked (one caller, no eviction meanwhile).  Timed as ``match``, ``path``, ``insert`` and their
        sum ``request``.  Returns the matched length.
        """
        from sglang.srt.mem_cache.base_prefix_cache import InsertParams, MatchPrefixParams
        from sglang.srt.mem_cache.radix_cache import RadixKey

        ids = array("q", tokens)
        n = len(ids) // self.ps * self.ps
        if n == 0:
            return 0
        del ids[n:]
        clock, cache = self.clock, self.cache
        key = RadixKey(ids, extra_key=extra_key)
        t0 = clock()
        hit = cache.match_prefix(MatchPrefixParams(key=key))
        t1 = clock()
        m = hit.device_prefix_len
        prefix = cache.path_device_indices(hit.last_device_node)[:m]
        t2 = clock()
        if len(prefix) != m:
            raise AssertionError(f"path of the match node holds {len(prefix)} slots, matched {m}")
        fresh = self._alloc(n - m) if n > m else prefix[:0]
        value = torch.cat([prefix, fresh]) if m else fresh
        # prev_prefix_len: the first m slots are the tree's own (UnifiedRadixCache frees the
        # duplicates of a cached prefix from there on; RadixCache and bcr free nothing).
        params = InsertParams(key=RadixKey(ids, extra_key=extra_key), value=value, prev_prefix_len=m)
        t3 = clock()
        res = cache.insert(params)
        t4 = clock()
        if res.prefix_len != m:  # one caller, nothing inserted since its match
            raise AssertionError(f"insert found {res.prefix_len} tokens cached, the match {m}")
        # bcr reports what it took (a colliding key can stop its insert: the rest stays ours);
        # SGLang's caches take the whole key and leave total_len unset.
        taken = res.total_len if self._reports_total else n
        if taken < n:
            self.pools.allocator.free(value[taken:n])
        if self.timer is not None:
            self.timer.add("match", t1 - t0, m)
            self.timer.add("path", t2 - t1, m)
            self.timer.add("insert", t4 - t3, n)
            self.timer.add("request", (t2 - t0) + (t4 - t3), n)
        return m

    # --- slots -----------------------------------------------------------------------------------

    def _alloc(self, n: int) -> torch.Tensor:
        allocator = self.pools.allocator
        slots = allocator.alloc(n)
        if slots is None:
            before = self.cache.evictable_size()
            self._sg[1].evict_from_tree_cache(self.cache, n)
            self.evicted_for_alloc += before - self.cache.evictable_size()
            slots = allocator.alloc(n)
        if slots is None:
            raise MemoryError(f"cannot allocate {n} KV slots even after eviction")
        return slots

    def _extend(self, run: Running, end: int) -> None:
        """Give positions [committed, end) slots like alloc_extend (paged.py:204) and 'compute' them."""
        req, ps = run.req, self.ps
        kv = req.kv
        start = kv.kv_committed_len
        if end <= start:
            return
        row = self.pools.req_to_token_pool.req_to_token[kv.req_pool_idx]
        parts = []
        pos = start
        if ps > 1 and pos % ps:
            take = min(end, -(-pos // ps) * ps) - pos
            last = int(row[pos - 1])
            parts.append(torch.arange(last + 1, last + 1 + take, dtype=torch.int64, device=row.device))
            pos += take
        if end > pos:
            need = end - pos
            parts.append(self._alloc(-(-need // ps) * ps)[:need])
        slots = parts[0] if len(parts) == 1 else torch.cat(parts)
        self.pools.req_to_token_pool.write((kv.req_pool_idx, slice(start, end)), slots)
        kv.kv_committed_len = kv.kv_allocated_len = end
        if self.model is not None:
            self.model.extend(run, start, end, slots)
        if self.shadow is not None:
            writer = self._writer_of[req.rid]
            idx = slots.cpu().numpy()
            self.shadow[idx, 0] = writer
            self.shadow[idx, 1] = np.arange(start, end)

    # --- checks ----------------------------------------------------------------------------------

    def _check_hit(self, run: Running, prefix: torch.Tensor) -> None:
        """Every matched slot holds KV computed for this very position after these very tokens."""
        n = run.matched
        if len(prefix) != n:
            raise AssertionError(f"prefix indices {len(prefix)} != matched length {n}")
        if n == 0:
            return
        rec = self.shadow[prefix.cpu().numpy()]
        if not np.array_equal(rec[:, 1], np.arange(n)):
            raise AssertionError("a matched slot holds KV of another position (stale or foreign slot)")
        me = self.writers[self._writer_of[run.req.rid]]
        for writer in np.unique(rec[:, 0]):
            if writer < 0:
                raise AssertionError("a matched slot was never written")
            upto = int(rec[rec[:, 0] == writer, 1].max()) + 1
            if not np.array_equal(self.writers[writer][:upto], me[:upto]):
                raise AssertionError("a matched slot holds KV computed after different tokens")

    def held(self) -> int:
        """Tokens' worth of pages running requests own outside the tree."""
        ps = self.ps
        total = 0
        for run in self.running.values():
            kv = run.req.kv
            total += -(-kv.kv_allocated_len // ps) * ps - kv.cache_protected_len
        return total

    def accounting(self) -> tuple[int, int, int, int, int]:
        """(available, evictable, protected, held, total); balanced iff the first four sum to total."""
        a = self.pools.allocator.available_size()
        return a, self.cache.evictable_size(), self.cache.protected_size(), self.held(), self.pools.total

    def assert_balanced(self) -> None:
        a, e, p, h, t = self.accounting()
        if a + e + p + h != t:
            raise AssertionError(
                f"leak: available {a} + evictable {e} + protected {p} + held {h} != total {t}"
            )

    def drain(self, step: int, timer: OpTimer | None = None) -> int:
        """Evict everything evictable in calls of ``step`` tokens; returns tokens evicted."""
        return _exhaust(self.drain_steps(step, timer))

    def drain_steps(self, step: int, timer: OpTimer | None = None) -> Generator[None, None, int]:
        """:meth:`drain`, yielding after each ``evict`` call (to interleave several engines)."""
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        evicted = 0
        clock = timer.clock if timer is not None else time.perf_counter
        while self.cache.evictable_size() > 0:
            t0 = clock()
            got = self.cache.evict(EvictParams(num_tokens=step)).num_tokens_evicted
            if timer is not None:
                timer.add("evict", clock() - t0, got)
            if got == 0:
                raise AssertionError(f"evict() freed nothing with {self.cache.evictable_size()} evictable")
            evicted += got
            yield
        return evicted


def _exhaust(steps: Generator[None, None, Any]) -> Any:
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def run_trace(
    engine: Engine,
    requests: Iterable[Any],
    concurrency: int = 1,
    on_step: Callable[[Engine], None] | None = None,
) -> list[int]:
    """Serve requests in order with up to ``concurrency`` in flight (FIFO); returns matched lengths.

    Request i is matched and prefilled when it arrives; request i-concurrency finishes then.  So
    later requests match while earlier ones still hold their locks, and a request can compute a
    prefix another in-flight request is computing too (the duplicate path of ``checkpoint``).
    """
    return _exhaust(trace_steps(engine, requests, concurrency, on_step))


def trace_steps(
    engine: Engine,
    requests: Iterable[Any],
    concurrency: int = 1,
    on_step: Callable[[Engine], None] | None = None,
) -> Generator[None, None, list[int]]:
    """:func:`run_trace`, yielding after each arrival and each finish (to interleave engines)."""
    matched: list[int] = []
    window: list[Running] = []
    for r in requests:
        run = engine.start(r.prompt, r.output, rid=r.rid)
        matched.append(run.matched)
        engine.prefill(run)
        window.append(run)
        if on_step:
            on_step(engine)
        yield
        if len(window) > concurrency - 1:
            done = window.pop(0)
            engine.decode(done)
            engine.finish(done)
            if on_step:
                on_step(engine)
            yield
    for done in window:
        engine.decode(done)
        engine.finish(done)
        if on_step:
            on_step(engine)
        yield
    return matched


def plain_steps(engine: Engine, requests: Iterable[Any]) -> Generator[None, None, list[int]]:
    """:meth:`Engine.plain` for each request's tokens with KV (prompt and all outputs but the last),
    yielding after each; returns matched lengths."""
    matched: list[int] = []
    for r in requests:
        tokens = np.concatenate(
            [np.asarray(r.prompt, dtype=np.int64), np.asarray(r.output[:-1], dtype=np.int64)]
        )
        matched.append(engine.plain(tokens.tolist()))
        yield
    return matched


def lockstep(steps: dict[str, Generator[None, None, Any]]) -> dict[str, Any]:
    """Advance several step generators in turn, the turn order rotating every round; their results.

    Run against one another this way, engines share whatever the machine does meanwhile: drift
    in load or clock speed lands on every arm alike instead of on whichever ran at the time.
    """
    names = list(steps)
    done: dict[str, Any] = {}
    turn = 0
    while len(done) < len(names):
        for j in range(len(names)):
            name = names[(turn + j) % len(names)]
            if name in done:
                continue
            try:
                next(steps[name])
            except StopIteration as stop:
                done[name] = stop.value
        turn += 1
    return done
