"""Block-hash-chain index: the exact-prefix structure behind the ``bcr`` cache (no SGLang, no torch).

A token sequence is cut into blocks of ``page_size`` tokens.  Block i's key is the 64-bit chain hash
``h_i = h_{i-1} * Q + c_i  (mod 2**64)`` of its content word ``c_i`` (the token at page size 1, else
a hash of the block's bytes, :class:`ChainHasher`) whose seed ``h_{-1}`` is the namespace (extra
key, cache salt), so a key names the whole prefix ending at that block.

Blocks are stored in :class:`Run` s -- their tokens as one ``bytearray``, their KV slots as one
payload -- and a block is the handle ``(run, index)``.  An insert creates a run, or, when its walk
ends on the last block of a whole run nothing else hangs from (a request's next prefill chunk),
extends that run in place (amortised: only the new blocks are copied).  A run hangs
from a block of its parent run (or from the root).  Inside a run the next block is found by
comparing tokens, which is the hit's re-check anyway; between runs a lookup needs the child that
continues the query:

* a run at the root, or one of several runs hanging from the same block, is found through a dict
  from block keys to runs: the key of its first block, chained from the key of the block it hangs
  from;
* a run that is the only one hanging from its block is found by comparing its first block's tokens
  (one ``memcmp``); its key is not needed, so nothing is hashed for it.  When a second run comes to
  hang there, the key of that block is derived and both runs are entered in the dict.

Keys are derived only there -- the block a second child comes to hang from -- as one vectorised
chain from the deepest key the run (or, if it has none yet, the nearest run above it) already
knows, and kept: the keys a run knows are always a prefix of its blocks, so no block is ever hashed
twice.  So no operation does per-token or per-block Python work over a prompt:

* a lookup walks from the root (or from a block the caller already holds) and follows a run with
  one ``memcmp`` of the query bytes against the run's bytes (galloping where they diverge); where it
  leaves a run it compares the lone child's first block, or hashes one block of the query -- from
  the stored key of the block it leaves -- and probes the dict;
* an insert walks the same way and copies only the new blocks' tokens; it hashes the new run's
  first block only at the root or where the run is not the only child (and, once per such branch
  point, derives its key): a chunked prefill's checkpoints, each extending the last, hash nothing.

Collisions can only cause misses: a dict hit is accepted only if the run found starts exactly
there, hangs from the block the walk is on (or, at the root, carries the query's namespace) and its
tokens equal the query's; a key already taken is never overwritten (a colliding run at the root is
simply not cached, and the caller keeps its KV; below the root it stays out of the dict and is found
by its tokens, like a lone child).

Eviction is leaf-first LRU over single blocks (a run's tail goes in one step as far as the same
order would take it block by block).  Access stamps are written on the deepest touched
block only and carried to the parent when a block is evicted, which gives exactly the order a radix
tree gets by stamping every node on the path (a parent is never older than its children).  Locks
pin a block; a run's protected part is the prefix up to its deepest pin, and a run that becomes
protected pins its attach point in the parent, so a lock walks runs towards the root and stops where
protection already exists.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
import struct
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

try:
    from bcr.prefix import _walk  # built by the install (setup.py); ChainIndex says so if it is not
except ImportError:  # pragma: no cover - an uninstalled source tree
    _walk = None

TOKEN_BYTES = 8  # tokens are int64 (SGLang's RadixKey holds array("q"))
WALKS = ("native", "python")  # the lookup walk: C (_walk.c, the default) or its Python reference
SCALAR_BLOCKS = 2  # up to this many blocks are hashed by scalar steps (a numpy call costs more)
_MOD = 1 << 64
_MASK = _MOD - 1


def _powers(base: int, n: int) -> np.ndarray:
    """``base**i mod 2**64`` for i in [0, n) (uint64 arithmetic wraps)."""
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)


class ChainHasher:
    """Chain hash over blocks of int64 tokens: a cheap scalar step for one block, a cumsum for many.

    ``h_b = h_{b-1} * Q + c_b (mod 2**64)`` where ``c_b``, the block's content word, is its token at
    page size 1 and otherwise Python's own hash of the block's bytes (SipHash, keyed per process):
    a lookup hashes one block per run it enters from the dict, and 16 big-integer products per
    block cost several times one SipHash of its 128 bytes.  Keys live in one process's memory and
    a collision can only cause a miss, so a per-process key is enough; ``seed`` fixes ``Q`` and
    the namespace seeds.
    """

    def __init__(self, seed: int | None = 0):
        rng = random.Random(seed) if seed is not None else random.SystemRandom()
        self.q = rng.getrandbits(64) | 1  # odd, hence invertible mod 2**64
        self._ns_key = rng.getrandbits(64).to_bytes(8, "little")
        self._qpow = _powers(self.q, 1 << 10)
        self._qinv = _powers(pow(self.q, -1, _MOD), 1 << 10)
        self._ns: dict[tuple[Any, Any], int] = {}
        self._ns_plain = self._seed((None, None))

    def namespace(self, extra_key: Any, cache_salt: Any) -> int:
        """Seed of the chain at the root: requests with different extra key or salt never share blocks."""
        if extra_key is None and cache_salt is None:
            return self._ns_plain
        k = (extra_key, cache_salt)
        v = self._ns.get(k)
        if v is None:
            v = self._seed(k)
            if len(self._ns) > 4096:  # extra keys are LoRA ids / salts: few, but never grow unbounded
                self._ns.clear()
            self._ns[k] = v
        return v

    def _seed(self, k: tuple[Any, Any]) -> int:
        digest = hashlib.blake2b(repr(k).encode(), digest_size=8, key=self._ns_key).digest()
        return int.from_bytes(digest, "little")

    def content(self, tokens: np.ndarray, page_size: int) -> np.ndarray:
        """The content words ``c_b`` of the whole blocks in ``tokens`` (uint64)."""
        if page_size == 1:
            return tokens
        raw, bb = tokens.tobytes(), page_size * TOKEN_BYTES
        words = [hash(raw[at : at + bb]) for at in range(0, len(raw) - bb + 1, bb)]
        return np.array(words, dtype=np.int64).view(np.uint64)  # two's complement: hash & MASK

    def chain(self, tokens: np.ndarray, page_size: int, prev: int) -> np.ndarray:
        """Keys of the blocks in ``tokens`` (uint64 view, a whole number of blocks) following ``prev``.

        ``h_b = h_{b-1} Q + c_b`` unrolls to ``Q**b (prev Q + sum_{k<=b} c_k Q**-k)``: one cumsum.
        """
        c = self.content(tokens, page_size)
        nb = len(c)
        if nb == 0:
            return np.empty(0, dtype=np.uint64)
        if len(self._qpow) < nb:
            size = max(nb, 2 * len(self._qpow))
            self._qpow, self._qinv = _powers(self.q, size), _powers(pow(self.q, -1, _MOD), size)
        keys = np.cumsum(c * self._qinv[:nb])  # uint64 throughout: wraps mod 2**64
        keys += prev * self.q % _MOD
        keys *= self._qpow[:nb]
        return keys

    def block_step(self, page_size: int) -> Callable[[int, Any, int], int]:
        """``step(prev, buf, offset)``: the key of the block at byte ``offset`` of ``buf`` after ``prev``.

        The scalar form of :meth:`chain`; a lookup calls it once per run it enters from a dict.
        """
        q = self.q
        if page_size == 1:
            unpack = struct.Struct("<Q").unpack_from

            def step(prev: int, buf: Any, offset: int) -> int:
                return (prev * q + unpack(buf, offset)[0]) & _MASK

        else:
            bb = page_size * TOKEN_BYTES

            def step(prev: int, buf: Any, offset: int) -> int:
                return (prev * q + hash(bytes(buf[offset : offset + bb]))) & _MASK

        return step

    def next_key(self, prev: int, tokens: Any, offset: int, page_size: int) -> int:
        """Key of the one block at byte ``offset`` of ``tokens`` following ``prev`` (same as :meth:`chain`)."""
        return self.block_step(page_size)(prev, tokens, offset)


class Run:
    """Blocks created by one insert: depths ``[start, start + size)``, alive up to ``live``."""

    __slots__ = (
        "branches",
        "head",
        "in_heap",
        "keys",
        "kids",
        "live",
        "ns",
        "pages",
        "parent",
        "pidx",
        "pins",
        "protected",
        "size",
        "start",
        "times",
        "tokens",
    )

    def __init__(
        self,
        tokens: bytearray,
        pages: Any,
        head: int | None,
        size: int,
        start: int,
        parent: Run | None,
        pidx: int,
        ns: int,
        now: int,
    ):
        self.tokens = tokens  # int64 bytes of this run's blocks only (grows when the run is extended)
        self.pages = pages  # the blocks' KV slots (opaque payload, sliceable)
        self.head = head  # key of block 0 (None until derived): the dict's key for this run
        self.keys: list[int] = [] if head is None else [head]  # keys of blocks [0, hashed), once known
        self.kids: dict[int, list[Run]] | None = None  # idx -> child runs found by tokens, not keys
        self.size = size
        self.start = start
        self.parent = parent
        self.pidx = pidx  # index in the parent run of the block this run hangs from (-1: root)
        self.ns = ns
        self.live = size
        self.protected = 0  # blocks [0, protected) are pinned (a lock at or below them)
        self.pins: dict[int, int] = {}  # idx -> direct locks + protected child runs attached there
        self.branches: dict[int, int] = {}  # idx -> live child runs attached there
        self.times = [now] * size  # direct access stamps; propagated upward on eviction
        self.in_heap = False

    @property
    def hashed(self) -> int:
        """Blocks whose keys are known: always a prefix of the run."""
        return len(self.keys)

    def tail_evictable(self) -> bool:
        live = self.live
        return live > self.protected and not self.branches.get(live - 1)


class Block(NamedTuple):
    """Handle of one cached block (``run is None``: the root)."""

    run: Run | None
    idx: int

    @property
    def depth(self) -> int:
        """Blocks from the root through this one."""
        return 0 if self.run is None else self.run.start + self.idx + 1


ROOT = Block(None, -1)


class ChainIndex:
    """Dict of block keys over runs, with exact-prefix lookup, pins and leaf-first LRU eviction.

    ``walk``: :meth:`longest` in C (``"native"``, the default: ``bcr/prefix/_walk.c``, built by the
    install) or in Python (``"python"``: the reference the tests hold the C walk to).
    """

    def __init__(self, page_size: int, hasher: ChainHasher | None = None, walk: str = "native"):
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        if walk not in WALKS:
            raise ValueError(f"walk must be one of {WALKS}, got {walk!r}")
        if walk == "native" and _walk is None:
            raise ImportError(
                "bcr: the compiled lookup walk bcr.prefix._walk is not built; install the package "
                "(make setup, or pip install -e .) or pass walk='python'"
            )
        self.page_size = page_size
        self.block_bytes = page_size * TOKEN_BYTES
        self.hasher = hasher if hasher is not None else ChainHasher()
        self._step = self.hasher.block_step(page_size)
        self._native = _walk.longest if walk == "native" else None
        self.reset()

    def reset(self) -> None:
        self.map: dict[int, Run] = {}
        self.runs: set[Run] = set()
        self.heap: list[tuple[int, int, Run]] = []
        self.evictable = 0  # blocks
        self.protected = 0  # blocks
        self._clock = 0
        self._seq = itertools.count()
        self.version = 0  # bumped by every insert that caches blocks and every eviction

    def tick(self) -> int:
        self._clock += 1
        return self._clock

    # --- lookup --------------------------------------------------------------------------------

    def key_at(self, run: Run, idx: int) -> int:
        """Key of block ``idx`` of ``run``: stored, or derived now and kept (see :meth:`_derive`)."""
        keys = run.keys
        return keys[idx] if idx < len(keys) else self._derive(run, idx)

    def _head(self, run: Run, prev: int) -> int:
        run.head = self._step(prev, run.tokens, 0)
        run.keys = [run.head]
        return run.head

    def _derive(self, run: Run, idx: int) -> int:
        """Hash blocks [run.hashed, idx] of ``run`` from its deepest known key and keep their keys.

        A run that knows no key yet (a lone child) first gets its first block's key from the block
        it hangs from, deriving upwards to the nearest run that knows one.  Only blocks never hashed
        before are hashed: scalar steps for a block or two, else one vectorised :meth:`ChainHasher.chain`.
        """
        if run.head is None:
            up, at = [], run
            while at is not None and at.head is None:
                up.append(at)
                at = at.parent  # a root run always knows its key
            for r in reversed(up):
                parent = r.parent
                self._head(r, self.key_at(parent, r.pidx))
            if idx == 0:
                return run.head
        keys = run.keys
        a, prev = len(keys), keys[-1]
        ps, bb = self.page_size, self.block_bytes
        n = idx + 1 - a
        if n <= SCALAR_BLOCKS:
            step, tokens = self._step, run.tokens
            for b in range(a, idx + 1):
                prev = step(prev, tokens, b * bb)
                keys.append(prev)
        else:
            block = np.frombuffer(run.tokens, dtype=np.uint64, count=n * ps, offset=a * bb)
            keys.extend(self.hasher.chain(block, ps, prev).tolist())
        return keys[idx]

    def _agree(self, tokens: Any, pos: int, run: Run, lo: int, hi: int) -> int:
        """How many of ``run``'s blocks [lo, hi) equal the query's blocks from byte ``pos`` on.

        The run's branch points are tried first, deepest first -- queries that share a run tend to
        part where earlier ones did -- and right past one that agrees, the next block: a query
        that parts there costs two memcmps.  Otherwise one memcmp settles a query that follows the
        run to ``hi``, and a gallop then a bisection find where it parts, so the bytes compared stay
        proportional to the agreeing part.

        ``tokens`` is any byte buffer (a ``memoryview`` of the caller's array: never copied); each
        comparison is one ``bytes.startswith`` of the run's bytes against a slice of the query.
        """
        bb = self.block_bytes
        own = run.tokens.startswith  # own(q, at): run bytes from offset ``at`` start with q
        base = pos - lo * bb  # query byte offset of the run's byte 0
        n = hi - lo
        good, top = 0, n  # blocks [lo, lo + good) agree; [lo, lo + top) do not all agree, if top < n
        branches = run.branches
        if branches:
            for b in sorted(branches, reverse=True) if len(branches) > 1 else branches:
                if not lo <= b < hi - 1:
                    continue
                if own(tokens[pos : base + (b + 1) * bb], lo * bb):
                    good = b + 1 - lo
                    at = (lo + good) * bb
                    if not own(tokens[base + at : base + at + bb], at):
                        return good
                    good += 1
                    break
                top = b + 1 - lo
        if top == n:
            at = (lo + good) * bb
            if own(tokens[base + at : base + hi * bb], at):
                return n
        step = 1
        while good + step < top:
            at = (lo + good) * bb
            if not own(tokens[base + at : base + at + step * bb], at):
                top = good + step
                break
            good, step = good + step, step * 2
        while top - good > 1:
            mid = (good + top) >> 1
            at = (lo + good) * bb
            if own(tokens[base + at : base + (lo + mid) * bb], at):
                good = mid
            else:
                top = mid
        return good

    def longest(self, tokens: Any, nb: int, ns: int, start: Block = ROOT) -> tuple[int, Block]:
        """Longest cached prefix of the query's first ``nb`` blocks: (blocks matched, deepest block).

        ``start`` is a live block whose path the caller knows equals the query's prefix (a request's
        locked block); the walk resumes there instead of at the root.  ``tokens`` holds at least
        ``nb`` blocks.  The C walk and :meth:`_longest_py` give the same answer.
        """
        native = self._native
        if native is None:
            return self._longest_py(tokens, nb, ns, start)
        depth, run, idx = native(tokens, nb, ns, start.run, start.idx, self.map, self._step, self.block_bytes)
        return depth, (ROOT if run is None else Block(run, idx))

    def _longest_py(self, tokens: Any, nb: int, ns: int, start: Block = ROOT) -> tuple[int, Block]:
        """:meth:`longest` in Python: the reference for ``_walk.c``, which follows it line for line."""
        bb = self.block_bytes
        run, idx = start
        depth = 0
        if run is not None:
            depth = run.start + idx + 1
            if idx + 1 < run.live and depth < nb:  # resume inside the held run
                same = self._agree(tokens, depth * bb, run, idx + 1, min(run.live, idx + 1 + nb - depth))
                idx += same
                depth += same
        get, step = self.map.get, self._step
        while depth < nb:
            if run is None:
                child = get(step(ns, tokens, depth * bb))
                if child is None or child.parent is not None or child.ns != ns:
                    break  # absent, or a colliding key: a miss, never a wrong hit
            else:
                count = run.branches.get(idx)
                if not count:
                    break  # no run hangs from this block: nothing to look up
                child = None
                kids = run.kids
                lone = kids.get(idx) if kids is not None else None
                if lone is not None:  # runs found by their first block's tokens
                    at = depth * bb
                    block = tokens[at : at + bb]
                    for kid in lone:
                        if kid.tokens.startswith(block):
                            child = kid
                            break
                    if child is None and len(lone) == count:
                        break  # no other run hangs here: a miss
                if child is None:
                    prev = run.keys[idx]  # derived when they were keyed
                    child = get(step(prev, tokens, depth * bb))
                    if child is None or child.parent is not run or child.pidx != idx:
                        break  # absent, or a colliding key: a miss, never a wrong hit
            hi = min(child.live, nb - depth)
            same = self._agree(tokens, depth * bb, child, 0, hi)
            if same == 0:
                break  # its first block holds other tokens: a colliding key
            run, idx = child, same - 1
            depth += same
        return depth, (ROOT if run is None else Block(run, idx))

    def touch(self, block: Block) -> None:
        if block.run is not None:
            block.run.times[block.idx] = self.tick()

    # --- insert ----------------------------------------------------------------------------------

    def insert(
        self,
        tokens: Any,
        nb: int,
        ns: int,
        pages: Callable[[int, int], Any],
        start: Block = ROOT,
        extend: Callable[[Any, Any], Any] | None = None,
        found: tuple[int, Block] | None = None,
    ) -> tuple[int, Block]:
        """Cache the query's first ``nb`` blocks; ``pages(lo, hi)`` gives the payload of new blocks [lo, hi).

        Returns (blocks that were already cached, deepest block now cached).  The deepest block is
        at depth ``nb`` unless the new run would start at the root with a key already taken (a
        collision the walk rejected): then nothing is cached and the caller keeps its KV.
        ``tokens`` is any byte buffer; only the new blocks are copied.

        When the walk ends on the last block of a whole run nothing else hangs from, the new blocks
        extend that run instead of starting one (``extend(old_pages, new_pages)`` gives the run's
        payload for both): a chunked prefill's checkpoints, each continuing the last, grow one run,
        so its path stays one slice and its lookups one ``memcmp``.  ``found`` is what
        :meth:`longest` would return, when the caller already knows it (nothing changed since).
        """
        k, last = self.longest(tokens, nb, ns, start) if found is None else found
        now = self.tick()
        if k == nb:
            if last.run is not None:
                last.run.times[last.idx] = now
            return k, last
        bb = self.block_bytes
        parent, pidx = last
        n = nb - k
        if (
            extend is not None
            and parent is not None
            and pidx == parent.size - 1
            and parent.live == parent.size
            and not parent.branches.get(pidx)
        ):
            parent.tokens += tokens[k * bb : nb * bb]  # a bytearray: amortised growth
            parent.pages = extend(parent.pages, pages(k, nb))
            parent.size += n
            parent.live += n
            parent.times += [now] * n
            self.evictable += n
            self.version += 1
            self._push(parent)
            return k, Block(parent, parent.size - 1)
        head = None
        if parent is None:
            head = self._step(ns, tokens, k * bb)
            if head in self.map:
                return k, last  # the key belongs to another run (the walk rejected it): not cached
        own = bytearray(tokens[k * bb : nb * bb])  # copies the new blocks only (a view's slice too)
        run = Run(own, pages(k, nb), head, n, k, parent, pidx, ns, now)
        if parent is None:
            self.map[head] = run
        else:
            count = parent.branches.get(pidx, 0)
            if count == 0:  # the only run hanging here: found by its tokens, nothing hashed
                if parent.kids is None:
                    parent.kids = {}
                parent.kids[pidx] = [run]
            else:
                self._key_children(parent, pidx, run)
            parent.branches[pidx] = count + 1
        self.runs.add(run)
        self.evictable += n
        self.version += 1
        self._push(run)
        return k, Block(run, n - 1)

    def _key_children(self, parent: Run, pidx: int, run: Run) -> None:
        """``run`` comes to hang beside others from ``parent``'s block ``pidx``: enter all in the dict.

        The block's key is derived (once), each child's first key chained from it.  A child whose key
        is taken stays out of the dict and is found by its tokens.
        """
        prev = self.key_at(parent, pidx)
        kids = parent.kids
        lone = kids.pop(pidx, None) if kids is not None else None
        left = []
        for kid in (*(lone or ()), run):
            head = kid.head if kid.head is not None else self._head(kid, prev)
            if head in self.map:
                left.append(kid)  # a colliding key: found by its tokens instead
            else:
                self.map[head] = kid
        if left:
            if parent.kids is None:
                parent.kids = {}
            parent.kids[pidx] = left

    # --- locks -----------------------------------------------------------------------------------

    def lock(self, block: Block) -> int:
        """Pin ``block`` (and so its path); returns the blocks that became protected."""
        run, idx = block
        if run is None:
            return 0
        if not 0 <= idx < run.live:
            raise ValueError(f"bcr: cannot lock block {idx} of a run with {run.live} live blocks")
        gained = 0
        run.pins[idx] = run.pins.get(idx, 0) + 1
        while idx + 1 > run.protected:
            was = run.protected
            gained += idx + 1 - was
            run.protected = idx + 1
            if was or run.parent is None:
                break
            run, idx = run.parent, run.pidx
            run.pins[idx] = run.pins.get(idx, 0) + 1
        self.protected += gained
        self.evictable -= gained
        return gained

    def unlock(self, block: Block) -> int:
        """Release one pin taken by :meth:`lock`; returns the blocks that became evictable."""
        run, idx = block
        if run is None:
            return 0
        lost = 0
        while True:
            count = run.pins.get(idx, 0)
            if count <= 0:
                raise RuntimeError(f"bcr: unlock of block {idx} that holds no lock (double release?)")
            if count > 1:
                run.pins[idx] = count - 1
                break
            del run.pins[idx]
            if idx + 1 < run.protected:  # a deeper pin still protects this run
                break
            keep = max(run.pins) + 1 if run.pins else 0
            lost += run.protected - keep
            run.protected = keep
            self._push(run)
            if keep or run.parent is None:
                break
            run, idx = run.parent, run.pidx
        self.protected -= lost
        self.evictable += lost
        return lost

    # --- eviction --------------------------------------------------------------------------------

    def _push(self, run: Run) -> None:
        if not run.in_heap and run.tail_evictable():
            heapq.heappush(self.heap, (run.times[run.live - 1], next(self._seq), run))
            run.in_heap = True

    def evict(self, n_blocks: int) -> list[tuple[Run, int, int]]:
        """Evict up to ``n_blocks`` unpinned leaf blocks, least recently used first.

        Returns the freed ranges as (run, lo, hi): the caller frees ``run.pages[lo:hi]``.
        """
        freed: list[tuple[Run, int, int]] = []
        heap = self.heap
        self.version += 1
        need = n_blocks
        while need > 0 and heap:
            stamp, _, run = heapq.heappop(heap)
            run.in_heap = False
            if not run.tail_evictable():
                continue
            times = run.times
            hi = run.live
            if times[hi - 1] != stamp:  # touched since it was queued
                self._push(run)
                continue
            # Blocks [lo, hi) go at once: unpinned, no run hanging from them, and none newer than
            # the oldest other candidate (stamps carried down a run only grow: a parent is never
            # older than its child).  The tail block itself always goes.
            lo = max(run.protected, hi - need)
            if run.branches:
                lo = max(lo, max(run.branches) + 1)
            if lo < hi - 1 and heap:
                top = heap[0][0]
                if max(times[lo:hi]) > top:
                    carried, b = times[hi - 1], hi - 1
                    while b > lo:
                        nxt = times[b - 1] if times[b - 1] > carried else carried
                        if nxt > top:
                            break
                        carried, b = nxt, b - 1
                    lo = b
            at = lo - 1 if lo else 0  # where the carried stamp lands (block 0 of a detached run)
            if hi - at > 1:
                times[at] = max(times[at:hi])
            run.live = lo
            need -= hi - lo
            freed.append((run, lo, hi))
            self.evictable -= hi - lo
            if lo == 0:
                self._detach(run)
            else:
                self._push(run)
        return freed

    def _detach(self, run: Run) -> None:
        self.runs.discard(run)
        parent = run.parent
        pidx = run.pidx
        if run.head is not None and self.map.get(run.head) is run:
            del self.map[run.head]
        elif parent is not None and parent.kids and pidx in parent.kids:
            lone = parent.kids[pidx]
            lone.remove(run)
            if not lone:
                del parent.kids[pidx]
        if parent is None:
            return
        left = parent.branches[pidx] - 1
        if left:
            parent.branches[pidx] = left
        else:
            del parent.branches[pidx]
        if run.times[0] > parent.times[pidx]:
            parent.times[pidx] = run.times[0]
        self._push(parent)

    # --- paths and checks ------------------------------------------------------------------------

    def path(self, block: Block) -> list[tuple[Run, int]]:
        """(run, blocks used) from the root down to ``block``."""
        segs = []
        run, idx = block
        while run is not None:
            segs.append((run, idx + 1))
            run, idx = run.parent, run.pidx
        segs.reverse()
        return segs

    def live_ranges(self) -> Iterator[tuple[Run, int]]:
        for run in self.runs:
            yield run, run.live

    def sanity_check(self, locks: dict[Block, int] | None = None) -> None:
        """Recompute every counter and link from scratch; raise AssertionError on the first mismatch.

        ``locks`` (block -> count), when given, must be exactly the direct locks outstanding.
        """
        branches: dict[int, dict[int, int]] = {}  # id(parent run) -> attach idx -> live child runs
        child_pins: dict[int, dict[int, int]] = {}  # the same, counting protected child runs only
        keyed = 0
        for run in self.runs:
            assert 0 < run.live <= run.size, "a listed run has no live block"
            in_map = run.head is not None and self.map.get(run.head) is run
            keyed += in_map
            lone = run.parent.kids.get(run.pidx, ()) if run.parent is not None and run.parent.kids else ()
            if run.parent is None:
                assert in_map, "a live root run is not reachable through its key"
            else:
                assert in_map != any(r is run for r in lone), (
                    "a live run is reachable through neither key nor tokens"
                )
                if in_map:
                    assert run.parent.hashed > run.pidx, "a keyed child hangs from a block without a key"
            assert (run.head is None) == (run.hashed == 0) and run.hashed <= run.size
            if run.head is not None and run.parent is not None and run.parent.hashed > run.pidx:
                want = self.hasher.next_key(self.key_at(run.parent, run.pidx), run.tokens, 0, self.page_size)
                assert run.head == want, "a run's first key is not chained from its parent block's key"
            for idx, kids in (run.kids or {}).items():
                assert kids and all(k.parent is run and k.pidx == idx and k in self.runs for k in kids)
                assert len(kids) == run.branches.get(idx, 0) or run.hashed > idx, (
                    "keyed children without a key"
                )
            if run.hashed > 1:  # the derived keys are the chain over the run's own tokens
                rest = np.frombuffer(
                    run.tokens,
                    dtype=np.uint64,
                    count=(run.hashed - 1) * self.page_size,
                    offset=self.block_bytes,
                )
                want = [run.head, *self.hasher.chain(rest, self.page_size, run.head).tolist()]
                assert run.keys == want, "a derived key is not the chain's"
            assert 0 <= run.protected <= run.live
            if run.parent is None:
                assert run.start == 0
                continue
            assert run.parent in self.runs, "a live run hangs from an evicted run"
            assert run.pidx < run.parent.live, "a live run hangs from an evicted block"
            assert run.start == run.parent.start + run.pidx + 1
            at = branches.setdefault(id(run.parent), {})
            at[run.pidx] = at.get(run.pidx, 0) + 1
            if run.protected:
                pins = child_pins.setdefault(id(run.parent), {})
                pins[run.pidx] = pins.get(run.pidx, 0) + 1
        direct: dict[int, dict[int, int]] = {}
        for block, count in (locks or {}).items():
            if count:
                assert block.run in self.runs and block.idx < block.run.live, "a lock on an evicted block"
                direct.setdefault(id(block.run), {})[block.idx] = count
        evictable = protected = 0
        for run in self.runs:
            kids, mine = child_pins.get(id(run), {}), direct.get(id(run), {})
            for idx, count in run.pins.items():
                if locks is not None:
                    want = kids.get(idx, 0) + mine.get(idx, 0)
                    assert count == want, f"pins {count} != locks + protected children {want}"
                else:
                    assert count >= kids.get(idx, 0), "a protected child run does not pin its parent"
            assert set(kids) <= set(run.pins) and set(mine) <= set(run.pins), "a pin went missing"
            deepest = max(run.pins) + 1 if run.pins else 0
            assert run.protected == deepest, f"protected {run.protected} != deepest pin + 1 ({deepest})"
            assert run.branches == branches.get(id(run), {}), "branch counts disagree with the runs"
            protected += run.protected
            evictable += run.live - run.protected
        assert len(self.map) == keyed, "the dict holds keys of evicted runs"
        assert evictable == self.evictable, f"evictable {self.evictable} != recount {evictable}"
        assert protected == self.protected, f"protected {self.protected} != recount {protected}"
