"""The block-hash-chain index on its own (no SGLang): keys, exact-prefix lookup, pins, LRU eviction."""

from __future__ import annotations

import numpy as np
import pytest
from hashers import ConstantHasher, CountingHasher
from hypothesis import given, settings
from hypothesis import strategies as st

from bcr.prefix.chain import ROOT, WALKS, Block, ChainHasher, ChainIndex

PAGE_SIZES = [1, 4, 16]


def as_bytes(tokens) -> bytes:
    return np.asarray(tokens, dtype=np.int64).tobytes()


class Model:
    """Reference: the set of cached block paths (tuples of token tuples) with per-block stamps."""

    def __init__(self, ps: int):
        self.ps = ps
        self.paths: set[tuple] = set()

    def blocks(self, tokens, nb):
        return tuple(tuple(tokens[i * self.ps : (i + 1) * self.ps]) for i in range(nb))

    def longest(self, tokens, nb):
        b = self.blocks(tokens, nb)
        k = 0
        while k < nb and b[: k + 1] in self.paths:
            k += 1
        return k

    def insert(self, tokens, nb):
        b = self.blocks(tokens, nb)
        for i in range(1, nb + 1):
            self.paths.add(b[:i])


def extend_pages(old, new):
    return np.concatenate([old, new])


EXTENDS = [None, extend_pages]  # runs never extended, or extended where the walk ends on a run's end


def insert(index: ChainIndex, tokens, ns: int = 7, start: Block = ROOT, extend=None):
    ps = index.page_size
    nb = len(tokens) // ps
    view = memoryview(as_bytes(tokens[: nb * ps]))  # any byte buffer: the cache passes views
    return index.insert(view, nb, ns, lambda lo, hi: np.arange(lo, hi), start, extend)


def longest(index: ChainIndex, tokens, ns: int = 7):
    ps = index.page_size
    nb = len(tokens) // ps
    return index.longest(as_bytes(tokens[: nb * ps]), nb, ns)


def path_tokens(index: ChainIndex, block: Block) -> list[int]:
    out: list[int] = []
    pages = []
    for run, n in index.path(block):
        out.extend(np.frombuffer(bytes(run.tokens), dtype=np.int64)[: n * index.page_size].tolist())
        pages.extend(run.pages[:n].tolist())
    assert pages == list(range(block.depth)), "a path's payload is not its blocks' (extended runs too)"
    return out


# --- keys --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ps", PAGE_SIZES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_vectorised_keys_equal_scalar_chain_and_extend_incrementally(ps, data):
    h = ChainHasher(seed=3)
    nb = data.draw(st.integers(1, 12))
    cut = data.draw(st.integers(0, nb))
    toks = data.draw(st.lists(st.integers(0, 2**40), min_size=nb * ps, max_size=nb * ps))
    raw = as_bytes(toks)
    u = np.frombuffer(raw, dtype=np.uint64)
    whole = h.chain(u, ps, 99).tolist()
    prev, scalar = 99, []
    for b in range(nb):
        prev = h.next_key(prev, raw, b * ps * 8, ps)
        scalar.append(prev)
    assert whole == scalar
    view = memoryview(bytearray(raw))  # the step reads any byte buffer: bytes, bytearray, views
    assert [h.next_key(k, view, b * ps * 8, ps) for b, k in enumerate([99, *whole[:-1]])] == whole
    head = h.chain(u[: cut * ps], ps, 99).tolist()
    tail = h.chain(u[cut * ps :], ps, head[-1] if head else 99).tolist()
    assert head + tail == whole  # extending a request's keys never needs its earlier tokens


def test_keys_depend_on_every_token_position_and_namespace():
    h = ChainHasher(seed=1)
    base = list(range(32))
    ref = h.chain(np.asarray(base, dtype=np.uint64), 16, 5)
    for i in range(32):
        changed = list(base)
        changed[i] += 1
        keys = h.chain(np.asarray(changed, dtype=np.uint64), 16, 5)
        assert keys[1] != ref[1]  # the second key names the whole 32-token prefix
        assert (keys[0] != ref[0]) == (i < 16)
    assert h.namespace("lora-a", None) != h.namespace("lora-b", None)
    assert h.namespace(None, "salt") != h.namespace(None, None)
    assert h.namespace("x", "y") == h.namespace("x", "y")
    assert ChainHasher(seed=1).q == h.q and ChainHasher(seed=2).q != h.q


# --- lookup against a reference -----------------------------------------------------------------------

seqs = st.lists(st.integers(0, 3), min_size=0, max_size=40)


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize("extend", EXTENDS)
@pytest.mark.parametrize("ps", PAGE_SIZES)
@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), seqs), min_size=1, max_size=25))
def test_longest_matches_reference_and_paths_are_exact(walk, ps, extend, ops):
    index, model = ChainIndex(ps, ChainHasher(seed=0), walk), Model(ps)
    for is_insert, toks in ops:
        nb = len(toks) // ps
        if is_insert:
            k, last = insert(index, toks, extend=extend)
            assert k == model.longest(toks, nb)
            model.insert(toks, nb)
            assert last.depth == nb
        k, block = longest(index, toks)
        assert k == model.longest(toks, nb) == block.depth
        assert path_tokens(index, block) == list(toks[: k * ps])
    index.sanity_check(locks={})


@pytest.mark.parametrize("extend", EXTENDS)
@pytest.mark.parametrize("ps", PAGE_SIZES)
@settings(max_examples=25, deadline=None)
@given(ops=st.lists(seqs, min_size=1, max_size=12), probe=st.integers(0, 10**6))
def test_derived_block_keys_equal_the_chain_from_the_root(ps, extend, ops, probe):
    """Keys kept on runs (derived on demand, lone children's too) are the chain hash from the root."""
    h = ChainHasher(seed=4)
    index = ChainIndex(ps, h)
    for toks in ops:
        insert(index, [t * 977 + probe for t in toks], extend=extend)  # large token values as well
        index.sanity_check(locks={})
    for run in list(index.runs):
        for idx in (run.size - 1, *range(run.size)):  # the last key first: its own fast path
            block = Block(run, idx)
            toks = path_tokens(index, block) if idx < run.live else None
            if toks is None:
                continue
            expect = h.chain(np.asarray(toks, dtype=np.uint64), ps, 7)[-1]
            assert index.key_at(run, idx) == int(expect)


def test_walk_resumes_from_a_held_block():
    index = ChainIndex(4, ChainHasher(seed=0))
    toks = list(range(40))
    _, mid = insert(index, toks[:20])
    k, last = insert(index, toks, start=mid)
    assert (k, last.depth) == (5, 10)
    assert longest(index, toks) == (10, last)
    assert path_tokens(index, last) == toks


def test_namespaces_never_share_blocks():
    index = ChainIndex(4, ChainHasher(seed=0))
    toks = list(range(16))
    insert(index, toks, ns=1)
    assert longest(index, toks, ns=2) == (0, ROOT)
    assert longest(index, toks, ns=1)[0] == 4


@pytest.mark.parametrize("extend", EXTENDS)
@pytest.mark.parametrize("ps", [1, 4])
@settings(max_examples=30, deadline=None)
@given(ops=st.lists(seqs, min_size=1, max_size=20))
def test_forced_collisions_only_cause_misses(ps, extend, ops):
    index = ChainIndex(ps, ConstantHasher(seed=0))
    cached_any = False
    for toks in ops:
        nb = len(toks) // ps
        k, last = insert(index, toks, extend=extend)
        assert path_tokens(index, last) == list(toks[: last.depth * ps])
        cached_any |= last.depth > 0
        for probe in ops:
            pk, block = longest(index, probe)
            assert path_tokens(index, block) == list(probe[: pk * ps])  # every hit is an exact prefix
        assert k <= nb
    index.sanity_check(locks={})
    # With every key equal, at most one root run is reachable: everything else is a miss.
    assert len({r for r in index.runs if r.parent is None}) <= 1 or not cached_any


# --- pins and eviction -------------------------------------------------------------------------------


@pytest.mark.parametrize("extend", EXTENDS)
@pytest.mark.parametrize("ps", [1, 4])
@settings(max_examples=40, deadline=None)
@given(
    script=st.lists(
        st.tuples(st.sampled_from(["insert", "lock", "unlock", "evict", "touch"]), seqs, st.integers(1, 12)),
        min_size=1,
        max_size=40,
    )
)
def test_pins_protect_paths_and_eviction_is_leaf_first_lru(ps, extend, script):
    index = ChainIndex(ps, ChainHasher(seed=0))
    locks: dict[Block, int] = {}
    for op, toks, n in script:
        if op == "insert":
            insert(index, toks, extend=extend)
        elif op == "lock":
            _, block = longest(index, toks)
            if block.run is not None:
                index.lock(block)
                locks[block] = locks.get(block, 0) + 1
        elif op == "unlock" and locks:
            block = sorted(locks, key=lambda b: (b.depth, id(b.run)))[n % len(locks)]
            index.unlock(block)
            locks[block] -= 1
            if not locks[block]:
                del locks[block]
        elif op == "touch":
            index.touch(longest(index, toks)[1])
        elif op == "evict":
            leaves = _evictable_leaves(index)
            before = index.evictable
            freed = index.evict(n)
            evicted = [(run, i) for run, lo, hi in freed for i in range(lo, hi)]
            assert len(evicted) == min(n, before)  # every unpinned block is reachable leaf-first
            if evicted and leaves:
                # the first block evicted is an unpinned leaf with the oldest stamp
                first_run, first_idx = freed[0][0], freed[0][2] - 1
                assert (first_run, first_idx) in leaves
                assert leaves[(first_run, first_idx)] == min(leaves.values())
        index.sanity_check(locks=locks)
        for block in locks:  # locked blocks and their whole paths survive
            assert block.idx < block.run.live
            for run, used in index.path(block):
                assert used <= run.live and run in index.runs
    for block, count in list(locks.items()):
        for _ in range(count):
            index.unlock(block)
    assert index.protected == 0
    index.evict(10**9)
    assert index.evictable == 0 and not index.runs and not index.map


def _evictable_leaves(index: ChainIndex) -> dict[tuple, int]:
    """Unpinned leaf blocks -> their effective stamp (max over what was evicted below them)."""
    out = {}
    for run in index.runs:
        if run.tail_evictable():
            out[(run, run.live - 1)] = run.times[run.live - 1]
    return out


def test_unlock_without_lock_and_lock_of_evicted_block_fail_loudly():
    index = ChainIndex(2, ChainHasher(seed=0))
    _, block = insert(index, [1, 2, 3, 4])
    with pytest.raises(RuntimeError, match="holds no lock"):
        index.unlock(block)
    index.evict(10)
    with pytest.raises(ValueError, match="cannot lock"):
        index.lock(block)


def test_lock_walks_only_until_protection_exists():
    index = ChainIndex(1, ChainHasher(seed=0))
    _, a = insert(index, list(range(100)))
    _, b = insert(index, [*range(100), 7, 8])
    assert index.lock(a) == 100
    assert index.lock(b) == 2  # only the two blocks past a's protected path
    assert index.unlock(a) == 0  # b still pins the path
    assert index.unlock(b) == 102
    assert index.protected == 0 and index.evictable == 102


def test_a_lone_child_is_found_by_tokens_and_a_branch_point_gets_its_key_once():
    ps = 4
    index = ChainIndex(ps, ChainHasher(seed=0))
    base = list(range(100, 132))  # 8 blocks
    _, a = insert(index, base, extend=extend_pages)
    _, ax = insert(index, [*base, 1, 1, 1, 1], extend=extend_pages)
    assert ax.run is a.run and a.run.size == 9  # the walk ended on the run's end: extended
    _, ay = insert(index, [*base, 2, 2, 2, 2], extend=extend_pages)
    assert ay.run is not a.run and a.run.kids == {7: [ay.run]}  # a lone child, no key derived
    assert a.run.hashed == 1 and ay.run.head is None and len(index.map) == 1
    assert longest(index, [*base, 2, 2, 2, 2]) == (9, ay)
    _, az = insert(index, [*base, 3, 3, 3, 3], extend=extend_pages)
    assert not a.run.kids and a.run.hashed == 8  # the branch point's key, derived once
    assert index.map[ay.run.head] is ay.run and index.map[az.run.head] is az.run
    for toks, want in (([*base, 1, 1, 1, 1], ax), ([*base, 2, 2, 2, 2], ay), ([*base, 3, 3, 3, 3], az)):
        assert longest(index, toks) == (9, want)
    assert longest(index, [*base, 4, 4, 4, 4]) == (8, Block(a.run, 7))
    index.sanity_check(locks={})
    index.evict(1)  # the oldest leaf block: ax's, the extended run's tail
    index.evict(2)  # then ay and az: both detach from the branch point
    assert len(index.map) == 1 and not a.run.branches
    index.sanity_check(locks={})


def _evict_block_by_block(index: ChainIndex, n_blocks: int) -> list[tuple]:
    """The eviction loop one block at a time (the reference the batched ChainIndex.evict must equal)."""
    import heapq

    freed, heap, need = [], index.heap, n_blocks
    while need > 0 and heap:
        stamp, _, run = heapq.heappop(heap)
        run.in_heap = False
        if not run.tail_evictable():
            continue
        times = run.times
        if times[run.live - 1] != stamp:
            index._push(run)
            continue
        hi = run.live
        while True:
            idx = run.live - 1
            run.live = idx
            need -= 1
            if idx == 0:
                break
            stamp = max(times[idx - 1], times[idx])
            times[idx - 1] = stamp
            if need == 0 or not run.tail_evictable() or (heap and heap[0][0] < stamp):
                break
        lo = run.live
        freed.append((run, lo, hi))
        index.evictable -= hi - lo
        if lo == 0:
            index._detach(run)
        else:
            index._push(run)
    return freed


@pytest.mark.parametrize("ps", [1, 4])
@settings(max_examples=40, deadline=None)
@given(
    script=st.lists(
        st.tuples(st.sampled_from(["insert", "insert", "lock", "touch", "evict"]), seqs, st.integers(1, 30)),
        min_size=1,
        max_size=30,
    )
)
def test_batched_eviction_equals_block_by_block(ps, script):
    import copy

    index = ChainIndex(ps, ChainHasher(seed=0))
    for op, toks, n in script:
        if op == "insert":
            insert(index, toks, extend=extend_pages if n % 2 else None)
        elif op == "lock":
            _, block = longest(index, toks)
            if block.run is not None and n % 3 == 0:
                index.lock(block)
        elif op == "touch":
            index.touch(longest(index, toks)[1])
        else:
            memo: dict = {}
            twin = copy.deepcopy(index, memo)
            got = index.evict(n)
            want = _evict_block_by_block(twin, n)
            assert [(memo[id(r)], lo, hi) for r, lo, hi in got] == want
            assert [r.times[: r.live] for r in index.runs] == [
                memo[id(r)].times[: r.live] for r in index.runs
            ]
            index.sanity_check()


def test_a_deeper_branch_point_hashes_only_the_blocks_past_the_keys_kept():
    """Keys derived for one branch point are kept: a deeper one hashes only the blocks in between."""
    ps = 4
    h = CountingHasher()
    index = ChainIndex(ps, h)
    base = list(range(1000, 1000 + 40 * ps))
    insert(index, base)  # one root run of 40 blocks
    for depth in (10, 30):  # two runs part from block depth - 1: its key is derived
        before = h.blocks
        for tail in (1, 2):
            insert(index, [*base[: depth * ps], *([tail] * ps)])
        hashed = h.blocks - before
        # two root probes and the two new runs' first blocks, plus the blocks never keyed before
        assert hashed == 4 + (depth - 1 if depth == 10 else depth - 10), (depth, hashed)
        index.sanity_check(locks={})  # (which rehashes everything to check the keys)
