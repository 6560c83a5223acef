"""Block-hash-chain index: the exact-prefix structure behind the ``bcr`` cache (no SGLang, no torch).

A token sequence is cut into blocks of ``page_size`` tokens.  Block i's key is the 64-bit chain hash
``h_i = h_{i-1} * Q**page_size + sum_j t_{i,j} * Q**(page_size-1-j)  (mod 2**64)`` whose seed
``h_{-1}`` is the namespace (extra key, cache salt), so a key names the whole prefix ending at that
block (equivalently: Horner's rule over every token from the seed).

Blocks one insert creates are stored together as a :class:`Run` -- their tokens as one ``bytes``
object, their page ids as one payload -- and a block is the handle ``(run, index)``.  A dict maps
block keys to blocks.  It holds the key of each run's first block: those are the only blocks a
lookup can enter through, because inside a run the next block is found by comparing tokens, which
is the hit's re-check anyway.  Every other block's key is derived when a lookup or an insert needs
it -- the key of the block a child hangs from -- and kept on its run.  So no operation does
per-token or per-block Python work over a prompt:

* a lookup walks from the root (or from a block the caller already holds) and follows a run with
  one ``memcmp`` of the query bytes against the run's bytes (galloping where they diverge); only
  where it leaves a run does it hash one block -- from the stored key of the block it leaves, so
  the prompt is never rehashed -- and probe the dict;
* an insert hashes the new run's first block and registers that key: constant dict work however
  long the run.

Collisions can only cause misses: a dict hit is accepted only if the run found starts exactly
there, hangs from the block the walk is on (or, at the root, carries the query's namespace) and its
tokens equal the query's; a key already taken is never overwritten (the colliding run is simply not
cached, and the caller keeps its KV).

Eviction is leaf-first LRU over single blocks.  Access stamps are written on the deepest touched
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
import operator
import random
import struct
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

TOKEN_BYTES = 8  # tokens are int64 (SGLang's RadixKey holds array("q"))
SCALAR_TOKENS = 128  # up to this many tokens are hashed in plain Python (numpy calls cost more)
_MOD = 1 << 64
_MASK = _MOD - 1


def _powers(base: int, n: int) -> np.ndarray:
    """``base**i mod 2**64`` for i in [0, n) (uint64 arithmetic wraps)."""
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)


class _Vectors(NamedTuple):
    """Per page size: in-block coefficients ``Q**(ps-1-j)``, ``R = Q**ps`` and powers of R, R**-1."""

    coeffs: np.ndarray
    r: int
    rpow: np.ndarray
    rinv: np.ndarray


class ChainHasher:
    """Chain hash over blocks of int64 tokens: vectorised for many blocks, scalar for one."""

    def __init__(self, seed: int | None = 0):
        rng = random.Random(seed) if seed is not None else random.SystemRandom()
        self.q = rng.getrandbits(64) | 1  # odd, hence invertible mod 2**64
        self._ns_key = rng.getrandbits(64).to_bytes(8, "little")
        self._vec: dict[int, _Vectors] = {}
        self._qpow = _powers(self.q, 1 << 10)
        self._ns: dict[tuple[Any, Any], int] = {}
        self._ns_plain = self._seed((None, None))
        self._block: dict[int, tuple[Callable[[bytes, int], tuple[int, ...]], list[int], int]] = {}

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

    def chain(self, tokens: np.ndarray, page_size: int, prev: int) -> np.ndarray:
        """Keys of the blocks in ``tokens`` (uint64 view, a whole number of blocks) following ``prev``.

        Per block, ``c_b = sum_j t_{b,j} Q**(ps-1-j)`` is one matrix-vector product over all blocks,
        and ``h_b = h_{b-1} R + c_b`` with ``R = Q**ps`` unrolls to ``R**b (prev R + sum_{k<=b} c_k
        R**-k)``: one cumsum over blocks.  (For ``ps = 1`` that is the plain polynomial over tokens.)
        """
        m = len(tokens)
        if m == 0:
            return np.empty(0, dtype=np.uint64)
        nb = m // page_size
        vec = self._vectors(page_size, nb)
        c = tokens if page_size == 1 else tokens.reshape(nb, page_size) @ vec.coeffs
        keys = np.cumsum(c * vec.rinv[:nb])  # uint64 throughout: wraps mod 2**64
        keys += prev * vec.r % _MOD
        keys *= vec.rpow[:nb]
        return keys

    def _vectors(self, page_size: int, nb: int) -> _Vectors:
        vec = self._vec.get(page_size)
        if vec is None or len(vec.rpow) < nb:
            r = pow(self.q, page_size, _MOD)
            size = max(nb, 2 * len(vec.rpow) if vec is not None else 1 << 10)
            coeffs = np.array(
                [pow(self.q, page_size - 1 - j, _MOD) for j in range(page_size)], dtype=np.uint64
            )
            vec = _Vectors(coeffs, r, _powers(r, size), _powers(pow(r, -1, _MOD), size))
            self._vec[page_size] = vec
        return vec

    def block_spec(self, page_size: int) -> tuple[Callable[[bytes, int], tuple[int, ...]], list[int], int]:
        """One chain step in scalar form: (unpack a block's tokens, ``Q**(ps-1-j)``, ``Q**ps``).

        ``key = (prev * Q**ps + sum(t_j * Q**(ps-1-j))) & MASK``; callers on a hot path keep these
        and inline the step (a method call costs as much as the arithmetic).
        """
        spec = self._block.get(page_size)
        if spec is None:
            coeffs = [pow(self.q, page_size - 1 - j, _MOD) for j in range(page_size)]
            spec = (struct.Struct(f"<{page_size}Q").unpack_from, coeffs, pow(self.q, page_size, _MOD))
            self._block[page_size] = spec
        return spec

    def next_key(self, prev: int, tokens: bytes, offset: int, page_size: int) -> int:
        """Key of the one block at byte ``offset`` of ``tokens`` following ``prev`` (same as :meth:`chain`)."""
        unpack, coeffs, q_block = self.block_spec(page_size)
        return (prev * q_block + sum(map(operator.mul, unpack(tokens, offset), coeffs))) & _MASK

    def last_key(self, tokens: bytes, offset: int, n_tokens: int, prev: int) -> int:
        """The key after ``n_tokens`` tokens from byte ``offset`` following ``prev`` (Horner over tokens).

        Equals the last key :meth:`chain` gives for those tokens whatever the page size; many
        tokens take one dot product with the powers of Q instead of the whole chain.
        """
        if n_tokens == 0:
            return prev
        if n_tokens <= SCALAR_TOKENS:
            q = self.q
            for v in struct.unpack_from(f"<{n_tokens}Q", tokens, offset):
                prev = (prev * q + v) % _MOD
            return prev
        if len(self._qpow) < n_tokens:
            self._qpow = _powers(self.q, max(n_tokens, 2 * len(self._qpow)))
        y = np.frombuffer(tokens, dtype=np.uint64, count=n_tokens, offset=offset)
        tail = int(np.dot(y[::-1], self._qpow[:n_tokens]))  # sum y_i Q**(n-1-i), wrapping like chain()
        return (prev * pow(self.q, n_tokens, _MOD) + tail) % _MOD


class Run:
    """Blocks created by one insert: depths ``[start, start + size)``, alive up to ``live``."""

    __slots__ = (
        "branches",
        "head",
        "in_heap",
        "keys",
        "last",
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
        tokens: bytes,
        pages: Any,
        head: int,
        size: int,
        start: int,
        parent: Run | None,
        pidx: int,
        ns: int,
        now: int,
    ):
        self.tokens = tokens  # int64 bytes of this run's blocks only
        self.pages = pages  # one page id per block (opaque payload, sliceable)
        self.head = head  # key of block 0: the dict's key for this run
        self.keys: list[int] | None = None  # keys of blocks 1.., derived when first needed
        self.last: int | None = None  # key of the last block, derived when first needed
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
    """Dict of block keys over runs, with exact-prefix lookup, pins and leaf-first LRU eviction."""

    def __init__(self, page_size: int, hasher: ChainHasher | None = None):
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page_size = page_size
        self.block_bytes = page_size * TOKEN_BYTES
        self.hasher = hasher if hasher is not None else ChainHasher()
        self._step = self.hasher.block_spec(page_size)
        self.reset()

    def reset(self) -> None:
        self.map: dict[int, Run] = {}
        self.runs: set[Run] = set()
        self.heap: list[tuple[int, int, Run]] = []
        self.evictable = 0  # blocks
        self.protected = 0  # blocks
        self._clock = 0
        self._seq = itertools.count()

    def tick(self) -> int:
        self._clock += 1
        return self._clock

    # --- lookup --------------------------------------------------------------------------------

    def key_at(self, run: Run, idx: int) -> int:
        """Key of block ``idx`` of ``run``, derived from the run's first key on first need and kept."""
        if idx == 0:
            return run.head
        bb, ps = self.block_bytes, self.page_size
        if idx == run.size - 1:
            if run.last is None:
                run.last = self.hasher.last_key(run.tokens, bb, idx * ps, run.head)
            return run.last
        if run.keys is None:
            rest = np.frombuffer(run.tokens, dtype=np.uint64, offset=bb)
            run.keys = self.hasher.chain(rest, ps, run.head).tolist()
        return run.keys[idx - 1]

    def _agree(self, tokens: bytes, pos: int, run: Run, lo: int, hi: int) -> int:
        """How many of ``run``'s blocks [lo, hi) equal the query's blocks from byte ``pos`` on.

        The run's branch points are tried first, deepest first -- queries that share a run tend to
        part where earlier ones did -- and right past one that agrees, the next block: a query
        that parts there costs two memcmps.  Otherwise one memcmp settles a query that follows the
        run to ``hi``, and a gallop then a bisection find where it parts, so the bytes compared stay
        proportional to the agreeing part.
        """
        bb = self.block_bytes
        own = memoryview(run.tokens)  # bytes are immutable: a view blocks nothing
        n = hi - lo
        good, top = 0, n  # blocks [lo, lo + good) agree; [lo, lo + top) do not all agree, if top < n
        if run.branches:
            points = [b for b in run.branches if lo <= b < hi - 1]
            if len(points) > 1:
                points.sort(reverse=True)
            for b in points:
                if tokens.startswith(own[lo * bb : (b + 1) * bb], pos):
                    good = b + 1 - lo
                    at = lo + good
                    if not tokens.startswith(own[at * bb : (at + 1) * bb], pos + good * bb):
                        return good
                    good += 1
                    break
                top = b + 1 - lo
        if top == n and tokens.startswith(own[(lo + good) * bb : hi * bb], pos + good * bb):
            return n
        step = 1
        while good + step < top:
            if not tokens.startswith(own[(lo + good) * bb : (lo + good + step) * bb], pos + good * bb):
                top = good + step
                break
            good, step = good + step, step * 2
        while top - good > 1:
            mid = (good + top) >> 1
            if tokens.startswith(own[(lo + good) * bb : (lo + mid) * bb], pos + good * bb):
                good = mid
            else:
                top = mid
        return good

    def longest(self, tokens: bytes, nb: int, ns: int, start: Block = ROOT) -> tuple[int, Block]:
        """Longest cached prefix of the query's first ``nb`` blocks: (blocks matched, deepest block).

        ``start`` is a live block whose path the caller knows equals the query's prefix (a request's
        locked block); the walk resumes there instead of at the root.
        """
        bb = self.block_bytes
        run, idx = start
        depth = 0
        if run is not None:
            depth = run.start + idx + 1
            if idx + 1 < run.live and depth < nb:  # resume inside the held run
                same = self._agree(tokens, depth * bb, run, idx + 1, min(run.live, idx + 1 + nb - depth))
                idx += same
                depth += same
        get = self.map.get
        unpack, coeffs, q_block = self._step
        mul = operator.mul
        while depth < nb:
            if run is None:
                prev = ns
            elif not run.branches.get(idx):
                break  # no run hangs from this block: nothing to look up, a dict hit could only collide
            elif run.keys is not None and 0 < idx < run.size - 1:
                prev = run.keys[idx - 1]  # derived earlier (key_at)
            else:
                prev = self.key_at(run, idx)
            # The chain step for the query's next block, inlined (ChainHasher.next_key).
            child = get((prev * q_block + sum(map(mul, unpack(tokens, depth * bb), coeffs))) & _MASK)
            if (
                child is None
                or child.start != depth
                or child.parent is not run
                or (run is None and child.ns != ns)
                or (run is not None and child.pidx != idx)
            ):
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
        tokens: bytes,
        nb: int,
        ns: int,
        pages: Callable[[int, int], Any],
        start: Block = ROOT,
    ) -> tuple[int, Block]:
        """Cache the query's first ``nb`` blocks; ``pages(lo, hi)`` gives page ids of new blocks [lo, hi).

        Returns (blocks that were already cached, deepest block now cached).  The deepest block is
        at depth ``nb`` unless the new run's key is already taken (a collision the walk rejected):
        then nothing is cached and the caller keeps its KV.  Only the new run's first block is
        hashed, chained from the key of the deepest cached block.
        """
        k, last = self.longest(tokens, nb, ns, start)
        now = self.tick()
        if k == nb:
            if last.run is not None:
                last.run.times[last.idx] = now
            return k, last
        bb, ps = self.block_bytes, self.page_size
        prev = ns if last.run is None else self.key_at(last.run, last.idx)
        head = self.hasher.next_key(prev, tokens, k * bb, ps)
        if head in self.map:
            return k, last  # the key belongs to another block (the walk rejected it): not cached
        n = nb - k
        parent, pidx = last
        run = Run(tokens[k * bb : nb * bb], pages(k, nb), head, n, k, parent, pidx, ns, now)
        self.map[head] = run
        self.runs.add(run)
        if parent is not None:
            parent.branches[pidx] = parent.branches.get(pidx, 0) + 1
        self.evictable += n
        self._push(run)
        return k, Block(run, n - 1)

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
        need = n_blocks
        while need > 0 and heap:
            stamp, _, run = heapq.heappop(heap)
            run.in_heap = False
            if not run.tail_evictable():
                continue
            times = run.times
            if times[run.live - 1] != stamp:  # touched since it was queued
                self._push(run)
                continue
            hi = run.live
            while True:
                idx = run.live - 1
                run.live = idx
                need -= 1
                if idx == 0:
                    break
                stamp = max(times[idx - 1], times[idx])  # a parent is never older than its child
                times[idx - 1] = stamp
                if need == 0 or not run.tail_evictable() or (heap and heap[0][0] < stamp):
                    break
            lo = run.live
            freed.append((run, lo, hi))
            self.evictable -= hi - lo
            if lo == 0:
                self._detach(run)
            else:
                self._push(run)
        return freed

    def _detach(self, run: Run) -> None:
        self.runs.discard(run)
        if self.map.get(run.head) is run:
            del self.map[run.head]
        parent = run.parent
        if parent is None:
            return
        pidx = run.pidx
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
        for run in self.runs:
            assert 0 < run.live <= run.size, "a listed run has no live block"
            assert self.map.get(run.head) is run, "a live run is not reachable through its key"
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
        assert len(self.map) == len(self.runs), "the dict holds keys of evicted runs"
        assert evictable == self.evictable, f"evictable {self.evictable} != recount {evictable}"
        assert protected == self.protected, f"protected {self.protected} != recount {protected}"
