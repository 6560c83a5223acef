"""BCRCache against SGLang's own caches on CPU, driven through real Req lifecycles (bcr.prefix.sim).

Differential: without memory pressure every arm (bcr, RadixCache, UnifiedRadixCache on its Python
and Rust cores) must give every request the same matched length and the same KV slots, and end with
the same cached slots.  Under memory pressure the arms diverge by design, so each arm is checked on
its own: a shadow of slot contents proves every hit is an exact prefix, the pool balances after
every step, and nothing stays locked.
"""

from __future__ import annotations

from array import array
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sim = pytest.importorskip("bcr.prefix.sim")  # SGLang must import on CPU (the environment pins it)

from hashers import ConstantHasher, CountingHasher  # noqa: E402
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams  # noqa: E402
from sglang.srt.mem_cache.cache_init_params import CacheInitParams  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixKey  # noqa: E402

from bcr.contracts import ARMS  # noqa: E402
from bcr.prefix.cache import BCRCache  # noqa: E402

PAGE_SIZES = [1, 4, 16]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class RecordingEngine(sim.Engine):
    """Keeps the KV slots each request's row got for its matched prefix."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.hits: list[list[int]] = []

    def start(self, *args, **kw):
        run = super().start(*args, **kw)
        row = self.pools.req_to_token_pool.req_to_token[run.req.kv.req_pool_idx]
        self.hits.append(row[: run.matched].tolist())
        return run


@st.composite
def traces(draw, ps: int):
    """Requests over a tiny alphabet sharing cut-anywhere pieces of a few prefixes."""
    alphabet = st.integers(3, 5)
    bases = draw(st.lists(st.lists(alphabet, max_size=5 * ps + 3), min_size=1, max_size=3))
    reqs = []
    for i in range(draw(st.integers(1, 8))):
        base = bases[draw(st.integers(0, len(bases) - 1))]
        cut = draw(st.integers(0, len(base)))
        prompt = base[:cut] + draw(st.lists(alphabet, max_size=2 * ps + 2))
        prompt = prompt or [3]
        out = draw(st.lists(alphabet, min_size=1, max_size=ps + 3))
        reqs.append(SimpleNamespace(rid=f"r{i}", prompt=prompt, output=out))
    concurrency = draw(st.integers(1, 3))
    chunk = draw(st.sampled_from([None, 3, 2 * ps]))
    return reqs, concurrency, chunk


def replay(arm, ps, reqs, concurrency, chunk, kv_tokens, device="cpu", **cache_kw):
    pools = sim.make_pools(ps, kv_tokens, concurrency + 1, 1024, device=device)
    cache = sim.make_cache(arm, pools, **cache_kw)
    engine = RecordingEngine(cache, pools, chunk=chunk, shadow=True)
    matched = sim.run_trace(engine, reqs, concurrency, on_step=check_step)
    return engine, matched


def check_step(engine):
    """After every step: the pool balances, and bcr's own links and counters recount exactly."""
    engine.assert_balanced()
    if isinstance(engine.cache, BCRCache):
        engine.cache.sanity_check()


def twice(reqs):
    """The trace, then all of it again (fresh request ids): the second pass finds the first cached."""
    return reqs + [SimpleNamespace(rid=r.rid + "-again", prompt=r.prompt, output=r.output) for r in reqs]


def roomy(reqs, ps):
    return sum(len(r.prompt) + len(r.output) + ps for r in reqs) + 4 * ps


def finish_clean(engine):
    """Nothing locked or held once every request is released; draining gives the whole pool back."""
    _, _, p, h, total = engine.accounting()
    assert p == 0 and h == 0, f"left locked/held: protected {p}, held {h}"
    engine.drain(7)
    assert engine.pools.allocator.available_size() == total
    assert engine.cache.evictable_size() == 0 and engine.cache.protected_size() == 0


@pytest.mark.parametrize("ps", PAGE_SIZES)
@SETTINGS
@given(data=st.data())
def test_arms_agree_on_matched_lengths_and_kv_slots(ps, data):
    sim.configure_sglang(ps)
    reqs, concurrency, chunk = data.draw(traces(ps))
    results = {}
    # bcr twice: numpy page ids (its CPU default) and tensor page ids (its path on a GPU allocator)
    variants = [(a, {}) for a in ARMS if a != "bcr"]
    variants += [("bcr", {"verify_pages": True}), ("bcr", {"verify_pages": True, "numpy_pages": False})]
    for arm, kw in variants:
        engine, matched = replay(arm, ps, reqs, concurrency, chunk, roomy(reqs, ps), **kw)
        # RadixCache.all_values_flatten cannot cat an empty tree (radix_cache.py:637)
        cached = sorted(engine.cache.all_values_flatten().tolist()) if engine.cache.evictable_size() else []
        results[f"{arm}{'-tensor' if kw.get('numpy_pages') is False else ''}"] = (
            matched,
            engine.hits,
            cached,
        )
        finish_clean(engine)
    ref = results["radix"]
    for arm, got in results.items():
        assert got[0] == ref[0], f"{arm} matched lengths differ from RadixCache"
        assert got[1] == ref[1], f"{arm} KV slots of the matched prefixes differ from RadixCache"
        assert got[2] == ref[2], f"{arm} caches other slots than RadixCache"


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ps", [1, 16])
def test_arms_agree_on_the_allocators_device(device, ps):
    """Same differential on pools on ``device`` (tensor page ids on a GPU), checked against CPU."""
    sim.configure_sglang(ps)
    shared = [(i * 37) % 97 + 3 for i in range(5 * ps + 3)]
    reqs = [
        SimpleNamespace(
            rid=f"r{i}", prompt=shared[: len(shared) - (i % 3) * ps] + [200 + i] * (i % 4 + 1), output=[7, 8]
        )
        for i in range(9)
    ]
    out = {}
    for dev in dict.fromkeys(["cpu", device]):
        for arm in ARMS:
            engine, matched = replay(arm, ps, reqs, 2, 2 * ps, roomy(reqs, ps), device=dev)
            out[(dev, arm)] = (matched, engine.hits)
            finish_clean(engine)
    ref = out[("cpu", "radix")]
    assert sum(ref[0]) > 0
    for key, got in out.items():
        assert got == ref, key


def test_differential_sees_real_reuse_and_chunked_checkpoints():
    """The traces above must exercise hits, duplicates computed in flight, and chunk checkpoints."""
    ps = 4
    sim.configure_sglang(ps)
    shared = list(range(10, 40))
    reqs = [
        SimpleNamespace(rid=f"r{i}", prompt=shared + [50 + i] * (i + 1), output=[7, 8, 9]) for i in range(5)
    ]
    for arm in ARMS:
        engine, matched = replay(arm, ps, reqs, concurrency=2, chunk=8, kv_tokens=roomy(reqs, ps))
        # r0's chunk checkpoints (8, 16, 24) are cached when r1 arrives, so r1 hits 24 and then
        # computes block 6 (tokens 24-27) while r0 holds its own copy: whichever finishes second
        # finds it cached and must free its duplicate.  r2.. hit 28 of the 30 shared tokens.
        assert matched == [0, 24, 28, 28, 28], (arm, matched)
        finish_clean(engine)


@pytest.mark.parametrize("ps", PAGE_SIZES)
@pytest.mark.parametrize("arm", ["bcr", "radix", "unified_rust"])
@SETTINGS
@given(data=st.data())
def test_memory_pressure_hits_stay_exact_and_pool_balances(ps, arm, data):
    """Trace, then fillers of fresh tokens that cannot all stay cached, then the trace again."""
    sim.configure_sglang(ps)
    reqs, concurrency, chunk = data.draw(traces(ps))
    span = max(2 * ps, *(len(r.prompt) + len(r.output) for r in reqs))
    # Room for the requests in flight only: with k = span // ps >= 2 blocks cached per filler, the
    # fillers' (c + 4) * k pages exceed the pool's c * (k + 2) + 1 for every concurrency c <= 3.
    tight = concurrency * (-(-(span + 1) // ps) + 1) * ps + ps
    fillers = [
        SimpleNamespace(rid=f"fill{j}", prompt=list(range(1000 * (j + 1), 1000 * (j + 1) + span)), output=[7])
        for j in range(concurrency + 4)
    ]
    trace = (
        reqs
        + fillers
        + [SimpleNamespace(rid=r.rid + "-again", prompt=r.prompt, output=r.output) for r in reqs]
    )
    kw = {"verify_pages": True} if arm == "bcr" else {}
    engine, _ = replay(arm, ps, trace, concurrency, chunk, tight, **kw)  # the shadow checks every hit
    assert engine.evicted_for_alloc > 0
    finish_clean(engine)


def test_memory_pressure_evicts_least_recently_used_blocks():
    """Pool of 9 pages: A and B cached, A reused, C forces eviction, then B and A come back.

    bcr evicts single blocks, leaf first, least recently used first: C takes B's last three blocks
    (B older than the reused A), B2 then takes A's last three; each keeps its first block.
    RadixCache evicts whole nodes, so it loses B and then A entirely.
    """
    ps = 4
    sim.configure_sglang(ps)
    seq = {k: list(range(base, base + 16)) for k, base in (("A", 100), ("B", 200), ("C", 300))}
    order = ["A", "B", "A", "C", "B", "A"]
    reqs = [SimpleNamespace(rid=f"{k}{i}", prompt=seq[k], output=[7]) for i, k in enumerate(order)]
    got = {}
    for arm in ("bcr", "radix"):
        engine, matched = replay(arm, ps, reqs, 1, None, 36)
        assert engine.evicted_for_alloc > 0
        got[arm] = matched
        finish_clean(engine)
    assert got["bcr"] == [0, 0, 12, 0, 4, 4]
    assert got["radix"] == [0, 0, 12, 0, 0, 0]


@pytest.mark.parametrize("ps", [1, 4])
@SETTINGS
@given(data=st.data())
def test_forced_collisions_only_cause_misses(ps, data):
    sim.configure_sglang(ps)
    reqs, concurrency, chunk = data.draw(traces(ps))
    reqs = twice(reqs)
    kv = roomy(reqs, ps)
    engine, collided = replay("bcr", ps, reqs, concurrency, chunk, kv, hasher=ConstantHasher(seed=0))
    finish_clean(engine)  # the shadow already proved each collided hit exact
    _, honest = replay("radix", ps, reqs, concurrency, chunk, kv)
    assert all(c <= h for c, h in zip(collided, honest, strict=True))


def _params(ps: int, **kw) -> CacheInitParams:
    pools = sim.make_pools(ps, 4096, 4, 256)
    return CacheInitParams(
        disable=False,
        req_to_token_pool=pools.req_to_token_pool,
        token_to_kv_pool_allocator=pools.allocator,
        page_size=ps,
        **kw,
    )


def test_eagle_bigram_keys_are_rejected_with_a_clear_error():
    sim.configure_sglang(4)
    with pytest.raises(ValueError, match="EAGLE"):
        BCRCache(_params(4, is_eagle=True))
    cache = BCRCache(_params(4))
    key = RadixKey(array("q", range(9)), is_bigram=True)
    with pytest.raises(ValueError, match="bigram"):
        cache.match_prefix(MatchPrefixParams(key=key))
    with pytest.raises(ValueError, match="bigram"):
        cache.insert(InsertParams(key=key, value=torch.arange(8)))


def test_unsupported_policies_and_events_are_refused():
    sim.configure_sglang(4)
    with pytest.raises(ValueError, match="LRU"):
        BCRCache(_params(4, eviction_policy="lfu"))
    with pytest.raises(ValueError, match="events"):
        BCRCache(_params(4, enable_kv_cache_events=True))


@pytest.mark.parametrize("ps", [1, 16])
def test_path_indices_are_a_view_that_later_inserts_and_evictions_never_change(ps):
    """A one-run path is the run's own slots (no copy); extending the run -- past its buffer, so
    it is reallocated -- evicting its tail and caching the tail again leave every view as it was."""
    sim.configure_sglang(ps)
    pools = sim.make_pools(ps, 8192, 4, 1024)
    cache = sim.make_cache("bcr", pools, verify_pages=True)
    tokens = array("q", range(64 * ps))
    slots = pools.allocator.alloc(64 * ps)
    res = cache.insert(InsertParams(key=RadixKey(tokens[: 4 * ps]), value=slots[: 4 * ps]))
    path = cache.path_device_indices(res.last_device_node)
    assert torch.equal(path, slots[: 4 * ps])
    assert path.data_ptr() == cache.path_device_indices(res.last_device_node).data_ptr()  # no copy
    held = [(path, path.clone())]
    for blocks in (5, 8, 17, 40, 64):  # each insert extends the one run (the buffer doubles twice)
        res = cache.insert(InsertParams(key=RadixKey(tokens[: blocks * ps]), value=slots[: blocks * ps]))
        assert len(cache.index.runs) == 1
        path = cache.path_device_indices(res.last_device_node)
        assert torch.equal(path, slots[: blocks * ps])
        held.append((path, path.clone()))
    assert cache.evict(EvictParams(num_tokens=30 * ps)).num_tokens_evicted == 30 * ps
    again = pools.allocator.alloc(30 * ps)
    value = torch.cat([cache.path_device_indices(res.last_device_node)[: 34 * ps], again])
    res = cache.insert(InsertParams(key=RadixKey(tokens), value=value))
    assert torch.equal(cache.path_device_indices(res.last_device_node), value)
    for view, then in held:
        assert torch.equal(view, then)
    cache.sanity_check()


@pytest.mark.parametrize("ps", [4, 16])
def test_pages_must_be_whole(ps):
    sim.configure_sglang(ps)
    pools = sim.make_pools(ps, 4096, 4, 256)
    cache = sim.make_cache("bcr", pools, verify_pages=True)
    scrambled = pools.allocator.alloc(4 * ps).flip(0)
    with pytest.raises(ValueError, match="whole page"):
        cache.insert(InsertParams(key=RadixKey(array("q", range(100, 100 + 4 * ps))), value=scrambled))


def test_extra_key_and_cache_salt_separate_namespaces():
    sim.configure_sglang(4)
    pools = sim.make_pools(4, 4096, 4, 256)
    cache = sim.make_cache("bcr", pools)
    toks = array("q", range(16))
    cache.insert(InsertParams(key=RadixKey(toks, extra_key="a"), value=pools.allocator.alloc(16)))
    hit = cache.match_prefix(MatchPrefixParams(key=RadixKey(toks, extra_key="a")))
    assert hit.device_prefix_len == 16
    for key in (RadixKey(toks), RadixKey(toks, extra_key="b"), RadixKey(toks, extra_key="a", cache_salt="s")):
        assert cache.match_prefix(MatchPrefixParams(key=key)).device_prefix_len == 0
    assert (
        cache.match_prefix(MatchPrefixParams(key=RadixKey(toks, extra_key="a", limit=9))).device_prefix_len
        == 8
    )


def test_dfs_weight_order_equals_radix_cache():
    """SGLang's DFS-weight order over the same tree: heavier subtrees first, equal nodes together."""
    ps = 4
    sim.configure_sglang(ps)
    a, b = list(range(100, 112)), list(range(200, 208))
    seqs = {"ax": a + [1] * 8, "ay": a + [2] * 4, "axx": a + [1] * 8 + [9] * 4, "bz": b + [3] * 4}
    queries = ["bz", "ax", "ay", "axx", "ax", "ay", "axx", "axx", "ax", "ax"]
    orders = {}
    for arm in ("bcr", "radix"):
        pools = sim.make_pools(ps, 4096, 4, 256)
        cache = sim.make_cache(arm, pools)
        for name in ("ax", "ay", "axx", "bz"):
            toks = array("q", seqs[name])
            m = cache.match_prefix(MatchPrefixParams(key=RadixKey(toks))).device_prefix_len
            value = torch.cat(
                [
                    cache.path_device_indices(
                        cache.match_prefix(MatchPrefixParams(key=RadixKey(toks))).last_device_node
                    ),
                    pools.allocator.alloc(len(toks) - m),
                ]
            )
            cache.insert(InsertParams(key=RadixKey(toks), value=value))
        handles = [
            cache.match_prefix(MatchPrefixParams(key=RadixKey(array("q", seqs[q])))).last_device_node
            for q in queries
        ]
        orders[arm] = cache.dfs_weight_order(handles)
    assert orders["bcr"] == orders["radix"]
    assert [queries[i] for i in orders["bcr"]][:7] == ["axx", "axx", "axx", "ax", "ax", "ax", "ax"]


def test_checkpoints_and_matches_never_rehash_the_prompt():
    """50 chunk checkpoints of a 400-token prompt hash a block or so, not the prompt per checkpoint.

    Each chunk's checkpoint extends the request's own run (nothing else hangs from its end) and
    the release's tail hangs alone from it, so nothing is hashed but the root probes; the second
    request follows the prompt's one run with one memcmp.
    """
    ps = 4
    sim.configure_sglang(ps)
    pools = sim.make_pools(ps, 8192, 4, 1024)
    hasher = CountingHasher()
    cache = sim.make_cache("bcr", pools, hasher=hasher)
    engine = sim.Engine(cache, pools, chunk=8)
    prompt = [(i * 7919) % 251 + 3 for i in range(400)]
    engine.serve(prompt, [5] * 20)
    assert len(cache.index.runs) == 2  # 49 chunk checkpoints grew one run; the release added its tail
    assert hasher.tokens <= 4 * ps  # a rehash per checkpoint would be ~10,000 tokens
    before = hasher.tokens
    matched = engine.serve(prompt, [6])
    assert matched == 396  # max_prefix_len = len - 1, page-aligned
    assert hasher.tokens - before <= 2 * ps  # the root probe (and the release's branch point)


def plain_replay(arm, ps, reqs, kv_tokens, **cache_kw):
    """The requests as plain match_prefix / path_device_indices / insert calls (sim.Engine.plain)."""
    pools = sim.make_pools(ps, kv_tokens, 2, 1024)
    cache = sim.make_cache(arm, pools, **cache_kw)
    engine = sim.Engine(cache, pools)
    matched, hits = [], []
    for r in reqs:
        tokens = [*r.prompt, *r.output[:-1]]
        matched.append(engine.plain(tokens))
        n = matched[-1]
        if n:
            key = RadixKey(array("q", tokens[: len(tokens) // ps * ps]))
            node = cache.match_prefix(MatchPrefixParams(key=key)).last_device_node
            hits.append(cache.path_device_indices(node)[:n].tolist())
        else:
            hits.append([])
        engine.assert_balanced()
        if isinstance(cache, BCRCache):
            cache.sanity_check()
    return engine, matched, hits


@pytest.mark.parametrize("ps", PAGE_SIZES)
@SETTINGS
@given(data=st.data())
def test_plain_calls_agree_with_radix_cache_on_every_arm(ps, data):
    """A caller other than the scheduler: no request state, plain insert(InsertParams(key, value))."""
    sim.configure_sglang(ps)
    reqs, _, _ = data.draw(traces(ps))
    reqs = twice(reqs)
    results = {}
    variants = [(a, {}) for a in ARMS if a != "bcr"]
    variants += [
        ("bcr", {"verify_pages": True}),
        ("bcr-tensor", {"verify_pages": True, "numpy_pages": False}),
    ]
    for name, kw in variants:
        engine, matched, hits = plain_replay(name.split("-")[0], ps, reqs, roomy(reqs, ps), **kw)
        cached = sorted(engine.cache.all_values_flatten().tolist()) if engine.cache.evictable_size() else []
        results[name] = (matched, hits, cached)
        finish_clean(engine)
    ref = results["radix"]
    assert sum(ref[0][len(reqs) // 2 :]) >= sum(ref[0][: len(reqs) // 2])  # the second pass hits
    for name, got in results.items():
        assert got == ref, name
    engine, collided, _ = plain_replay("bcr", ps, reqs, roomy(reqs, ps), hasher=ConstantHasher(seed=0))
    assert all(c <= h for c, h in zip(collided, ref[0], strict=True))  # collisions only miss
    finish_clean(engine)


def test_plain_insert_after_match_rechecks_an_array_changed_in_place():
    """insert may reuse the caller's last match only while its tokens still equal the matched path."""
    ps = 4
    sim.configure_sglang(ps)
    out = {}
    for arm in ("bcr", "radix"):
        pools = sim.make_pools(ps, 4096, 2, 256)
        cache = sim.make_cache(arm, pools)
        a = array("q", range(10, 42))
        cache.insert(InsertParams(key=RadixKey(array("q", a)), value=pools.allocator.alloc(32)))
        ids = array("q", [*range(10, 26), *range(90, 106)])  # 16 tokens cached, then 16 new
        hit = cache.match_prefix(MatchPrefixParams(key=RadixKey(ids)))
        assert hit.device_prefix_len == 16
        ids[5] = 999  # the caller changes its array between match and insert
        value = torch.cat([cache.path_device_indices(hit.last_device_node), pools.allocator.alloc(16)])
        res = cache.insert(InsertParams(key=RadixKey(ids), value=value))
        assert res.prefix_len == 4  # only the first block still agrees with the cache
        pools.allocator.free(value[4:16])  # the caller's duplicates of what the tree holds
        ids2 = array("q", [*range(10, 26), *range(200, 204)])
        m = cache.match_prefix(MatchPrefixParams(key=RadixKey(ids2))).device_prefix_len
        out[arm] = (res.prefix_len, m, sorted(cache.all_values_flatten().tolist()))
    assert out["bcr"] == out["radix"]


@pytest.mark.parametrize("ps", [1, 16])
def test_plain_inserts_hash_in_proportion_to_their_new_blocks(ps):
    """64 keys extending one cached 64-block prompt: each insert hashes a few blocks, not the prompt.

    The prompt's blocks are hashed once, when keys first branch off its end (the key of that block
    is needed then); before that and afterwards nothing over the cached part is hashed.
    """
    sim.configure_sglang(ps)
    pools = sim.make_pools(ps, 1 << 16, 2, 2048)
    hasher = CountingHasher()
    cache = sim.make_cache("bcr", pools, hasher=hasher)
    prompt = [(i * 7919) % 251 + 3 for i in range(64 * ps)]
    cache.insert(InsertParams(key=RadixKey(array("q", prompt)), value=pools.allocator.alloc(len(prompt))))
    per_insert = []
    for i in range(64):
        key = [*prompt, *([300 + i] * (3 * ps))]  # 3 new blocks after the cached prompt
        before = hasher.tokens
        value = torch.cat(
            [
                cache.path_device_indices(
                    cache.match_prefix(MatchPrefixParams(key=RadixKey(array("q", prompt)))).last_device_node
                ),
                pools.allocator.alloc(3 * ps),
            ]
        )
        res = cache.insert(InsertParams(key=RadixKey(array("q", key)), value=value))
        assert res.prefix_len == len(prompt) and res.total_len == len(key)
        per_insert.append(hasher.tokens - before)
        cache.sanity_check()
    # The first key extends the prompt's run; the second hangs alone from the prompt's end (found
    # by its tokens); the third makes that block a branch point: its key is derived, once.
    derived = 64 * ps
    big = [i for i, n in enumerate(per_insert) if n > 4 * ps]
    assert big == [2] and per_insert[2] <= derived + 8 * ps
    assert sum(per_insert) <= derived + 64 * 4 * ps  # a rehash per insert would be 64 x 64 blocks


def free_slots(pools) -> set[int]:
    """Every KV slot the allocator would hand out now."""
    pages = pools.allocator.get_all_free_pages().tolist()
    ps = pools.page_size
    return {p * ps + j for p in pages for j in range(ps)}


@pytest.mark.parametrize("ps", [1, 4])
@pytest.mark.parametrize("collide", [False, True], ids=["honest", "every-key-collides"])
@SETTINGS
@given(data=st.data())
def test_plain_paths_hold_exactly_their_prefixes_through_evictions(ps, collide, data):
    """Plain match / path / insert with evictions in between: every slot a path returns is cached
    (not free) and holds KV written after exactly that prefix -- with every key colliding too, where
    the chain may only miss."""
    sim.configure_sglang(ps)
    reqs, _, _ = data.draw(traces(ps))
    reqs = twice(reqs)
    evicts = data.draw(st.lists(st.integers(0, 3 * ps), min_size=len(reqs), max_size=len(reqs)))
    pools = sim.make_pools(ps, roomy(reqs, ps), 2, 1024)
    hasher = ConstantHasher(seed=0) if collide else None
    cache = sim.make_cache("bcr", pools, verify_pages=True, hasher=hasher)
    wrote: dict[int, tuple[int, ...]] = {}  # slot -> the tokens its KV was computed after
    for r, evict in zip(reqs, evicts, strict=True):
        tokens = [*r.prompt, *r.output[:-1]]
        n = len(tokens) // ps * ps
        key = array("q", tokens[:n])
        hit = cache.match_prefix(MatchPrefixParams(key=RadixKey(key)))
        m = hit.device_prefix_len
        path = cache.path_device_indices(hit.last_device_node)
        assert len(path) == m
        free = free_slots(pools)
        for i, slot in enumerate(path.tolist()):
            assert slot not in free, "a path returned a free (evicted) slot"
            assert wrote[slot] == tuple(tokens[: i + 1]), "a path returned another prefix's slot"
        value = torch.cat([path, pools.allocator.alloc(n - m)]) if n > m else path
        res = cache.insert(InsertParams(key=RadixKey(key), value=value, prev_prefix_len=m))
        assert res.prefix_len == m
        for i in range(m, res.total_len):
            wrote[int(value[i])] = tuple(tokens[: i + 1])
        if res.total_len < n:  # a colliding key stopped the insert: the rest stays the caller's
            pools.allocator.free(value[res.total_len : n])
        cache.evict(EvictParams(num_tokens=evict))
        cache.sanity_check()
    finish_clean(sim.Engine(cache, pools))
