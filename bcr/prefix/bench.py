"""Cache-operation benchmark: every arm replays the serving workloads' token traces on CPU.

For each page size and workload, each arm gets its own pools and cache, and all arms replay the same
trace through :class:`bcr.prefix.sim.Engine` (the scheduler's calls, no model): warm-up replays
first, then measured ones.  The arms run in lockstep -- one request arrival or finish per arm in
turn, the turn order rotating -- so drift in the machine's load or clock lands on every arm alike
(on a shared machine it is large), and every op meets caches its neighbours cooled, as a scheduler's
would.  After every replay the caches are drained with timed ``evict`` calls, also in lockstep, and
each pool must be whole again (nothing leaked, nothing left locked).

Times are the calling thread's CPU time by default (``cache_ops.clock``): the cost to the
scheduler's thread, not inflated when other processes preempt it on a shared machine.

Two callers.  The scheduler's (every workload): the calls SGLang's scheduler makes for each
request.  Ops recorded (µs per call): ``match`` (the ``match_kv_cache`` call: ``match_prefix`` plus
SGLang's key construction and bookkeeping around it, the same for every arm), ``lock`` (the lock
taken on the match node right after), ``path`` (the matched prefix's slot indices,
``prefix_device_indices``), ``checkpoint`` (the whole call the scheduler makes after each prefill
chunk, and inside ``release``), ``insert`` (time inside ``insert`` per checkpoint -- RadixCache and
UnifiedRadixCache insert twice per checkpoint to split at the prompt boundary, so per-call counts
would flatter them), ``release`` (``release_kv_cache(checkpoint=True)``: the final checkpoint, the
row's free and the unlock), ``evict`` (the timed drain after each replay), and ``request``: per
request, what the scheduler's thread paid in cache calls -- match + lock + path + every prefill
checkpoint + release -- so the total cannot hide an op.  The plain caller (``cache_ops.plain``,
rows with workload ``NAME:plain``): per request, ``match_prefix`` on a plain ``RadixKey``,
``path_device_indices`` of its node, then ``insert(InsertParams(key, value))`` of the whole key
with no request state (:meth:`bcr.prefix.sim.Engine.plain`), recorded as ``match``, ``path``,
``insert``, their sum ``request``, and the drain's ``evict``.  ``tokens`` sums what the op handled
(matched tokens for match, lock and path, the key length for insert and checkpoint, the request's
tokens for release and request, evicted tokens for evict); ``cached_tokens`` is the matched total
of one replay.  ``us_p50_lo`` / ``us_p50_hi`` bound each p50 by order statistics, distribution-free,
at :data:`MEDIAN_COVERAGE`: the bounds of two arms' p50s then hold together at >= 95% (Bonferroni),
so a ratio of two p50s has an interval the ledger can decide by.

The pool holds the whole trace, so no replay runs under memory pressure (a replay that evicts
fails) and every arm must report the same cached (matched) tokens for every request; if they do
not, the run fails.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from bcr.contracts import CACHE_OPS_COLUMNS
from bcr.prefix import sim
from bcr.serving.workloads import TraceRequest, build_workloads

SCHEDULER = "scheduler"  # SGLang's scheduler calls: match_kv_cache, lock, checkpoints, release
PLAIN = "plain"  # plain match_prefix / path_device_indices / insert calls, no request state
# Per request, what the scheduler's thread pays: match + lock + path + every prefill checkpoint +
# release (which checkpoints); for the plain caller match + path + insert.
REQUEST_TOTAL = "request"
SCHEDULER_OPS = ("match", "lock", "path", "checkpoint", "insert", "release", "evict", REQUEST_TOTAL)
PLAIN_OPS = ("match", "path", "insert", "evict", REQUEST_TOTAL)
MEDIAN_COVERAGE = 0.975  # per arm: a ratio of two arms' p50s is bounded at >= 95%


class CachedTokensMismatch(RuntimeError):
    """Arms disagreed on how many tokens a request found cached: one of them is wrong."""


class PoolLeak(RuntimeError):
    """After draining, the pool is not whole or something is still locked."""


class _ArmTimer(sim.OpTimer):
    """OpTimer that records only while ``enabled`` (warm-up replays are not measured)."""

    def __init__(self, clock: str) -> None:
        super().__init__(clock)
        self.enabled = False

    def add(self, op: str, seconds: float, tokens: int = 0) -> None:
        if self.enabled:
            super().add(op, seconds, tokens)


def median_interval(samples: np.ndarray, coverage: float = MEDIAN_COVERAGE) -> tuple[float, float]:
    """Distribution-free interval for the median: order statistics ``x_(j+1)`` and ``x_(n-j)``, with
    ``j`` the largest such that ``P(Binomial(n, 1/2) <= j) <= (1 - coverage) / 2``.

    Fewer samples than any such ``j`` allows (n < 9 at 97.5%) give the whole range.
    """
    x = np.sort(np.asarray(samples, dtype=float))
    n = len(x)
    tail = (1.0 - coverage) / 2
    j = int(stats.binom.ppf(tail, n, 0.5))
    if stats.binom.cdf(j, n, 0.5) > tail:
        j -= 1
    if j < 0:
        return float(x[0]), float(x[-1])
    return float(x[j]), float(x[n - 1 - j])


def _pool_tokens(trace: list[TraceRequest], page_size: int) -> int:
    """Room for everything the trace could ever hold at once: no eviction during a replay."""
    return sum(-(-r.length // page_size) * page_size + page_size for r in trace)


def _replay(
    engines: dict[str, sim.Engine],
    trace: list[TraceRequest],
    concurrency: int,
    evict_tokens: int,
    caller: str = SCHEDULER,
) -> dict[str, list[int]]:
    """All arms through the trace in lockstep, then each drained in lockstep; checks the pools."""
    gc.collect()
    gc.disable()
    try:
        if caller == PLAIN:
            steps = {a: sim.plain_steps(e, trace) for a, e in engines.items()}
        else:
            steps = {a: sim.trace_steps(e, trace, concurrency) for a, e in engines.items()}
        matched = sim.lockstep(steps)
        sim.lockstep({a: e.drain_steps(evict_tokens, e.timer) for a, e in engines.items()})
    finally:
        gc.enable()
    for arm, engine in engines.items():
        a, e, p, h, total = engine.accounting()
        if a != total or e or p or h:
            raise PoolLeak(
                f"{arm} after drain: available {a}, evictable {e}, protected {p}, held {h} of {total}"
            )
        if engine.evicted_for_alloc:
            raise PoolLeak(
                f"{arm}: the replay evicted {engine.evicted_for_alloc} tokens: the pool is too small"
            )
    return matched


def bench_workload(
    name: str,
    trace: list[TraceRequest],
    page_size: int,
    ops_cfg: dict,
    log: Callable[[str], None] = print,
    caller: str = SCHEDULER,
) -> pd.DataFrame:
    """All arms on one (workload, page size) and caller; one row per (arm, op).

    Rows of the plain caller carry the workload ``NAME:plain`` (:func:`workload_name`).
    """
    if caller not in (SCHEDULER, PLAIN):
        raise ValueError(f"unknown caller {caller!r}")
    arms = list(ops_cfg["arms"])
    concurrency = int(ops_cfg["concurrency"]) if caller == SCHEDULER else 1
    pool = _pool_tokens(trace, page_size)
    context = max(r.length for r in trace) + page_size
    engines: dict[str, sim.Engine] = {}
    for arm in arms:
        pools = sim.make_pools(page_size, pool, concurrency + 1, context)
        cache = sim.make_cache(arm, pools)
        timer = _ArmTimer(ops_cfg.get("clock", "thread_cpu"))
        if caller == SCHEDULER:
            timer.instrument(cache)  # the plain caller times its own calls (sim.Engine.plain)
        engines[arm] = sim.Engine(cache, pools, chunk=ops_cfg.get("chunk"), timer=timer)
    warmup, repeats = int(ops_cfg["warmup"]), int(ops_cfg["repeats"])
    matched: dict[str, list[list[int]]] = {arm: [] for arm in arms}
    for rep in range(warmup + repeats):
        measured = rep >= warmup
        for engine in engines.values():
            engine.timer.enabled = measured
        got = _replay(engines, trace, concurrency, int(ops_cfg["evict_tokens"]), caller)
        if measured:
            for arm in arms:
                matched[arm].append(got[arm])
    name = workload_name(name, caller)
    ref = arms[0]
    for arm in arms[1:]:
        if matched[arm] != matched[ref]:
            bad = next(
                i for i, (x, y) in enumerate(zip(matched[arm][0], matched[ref][0], strict=True)) if x != y
            )
            raise CachedTokensMismatch(
                f"{name} page {page_size}: {arm} cached {sum(matched[arm][0])} tokens, {ref} "
                f"{sum(matched[ref][0])}; first disagreement at request {trace[bad].rid}"
            )
    rows = []
    for arm in arms:
        timer = engines[arm].timer
        cached = int(sum(matched[arm][0]))
        for op, samples in sorted(timer.samples.items()):
            us = np.asarray(samples)
            lo, hi = median_interval(us)
            rows.append(
                {
                    "arm": arm,
                    "workload": name,
                    "page_size": page_size,
                    "op": op,
                    "n": len(us),
                    "us_p50": float(np.percentile(us, 50)),
                    "us_p50_lo": lo,
                    "us_p50_hi": hi,
                    "us_p99": float(np.percentile(us, 99)),
                    "us_mean": float(us.mean()),
                    "tokens": int(timer.tokens.get(op, 0)),
                    "cached_tokens": cached,
                    "requests": len(trace),
                    "replays": repeats,
                    "clock": timer.clock_name,
                }
            )
    df = pd.DataFrame(rows, columns=CACHE_OPS_COLUMNS)
    log(summary_lines(df, name, page_size))
    return df


def summary_lines(df: pd.DataFrame, workload: str, page_size: int) -> str:
    """One line per op: p50 (p99) µs per arm."""
    arms = list(dict.fromkeys(df["arm"]))
    lines = [f"{workload} page {page_size}: cached tokens per replay {int(df['cached_tokens'].iloc[0])}"]
    for op, g in df.groupby("op", sort=True):
        by = g.set_index("arm")
        cells = [f"{a} {by.loc[a, 'us_p50']:.1f} ({by.loc[a, 'us_p99']:.0f})" for a in arms if a in by.index]
        lines.append(f"  {op:<10} p50 (p99) µs: " + " | ".join(cells))
    return "\n".join(lines)


def run(serving: dict, log: Callable[[str], None] = print) -> pd.DataFrame:
    """The whole benchmark for a ``serving`` config section."""
    ops_cfg = serving["cache_ops"]
    traces = build_workloads(serving)
    sim.configure_sglang(int(ops_cfg["page_sizes"][0]))  # imports SGLang
    # Move everything imported so far out of the collector's sight: a full collection over torch's
    # and SGLang's objects takes ~0.7 s here; frozen, the collect before each replay sees only the
    # garbage of the previous replay.
    gc.collect()
    gc.freeze()
    plain = set(ops_cfg.get("plain", []))  # check_config: each names a workload the config defines
    frames = []
    for page_size in ops_cfg["page_sizes"]:
        sim.configure_sglang(int(page_size))
        for name, trace in traces.items():
            frames.append(bench_workload(name, trace, int(page_size), ops_cfg, log))
            if name in plain:
                frames.append(bench_workload(name, trace, int(page_size), ops_cfg, log, caller=PLAIN))
    return pd.concat(frames, ignore_index=True)


def workload_name(workload: str, caller: str) -> str:
    """The ``workload`` value of a row: the trace's name, ``NAME:plain`` for the plain caller."""
    return workload if caller == SCHEDULER else f"{workload}:{caller}"


def target_table(df: pd.DataFrame, arm: str = "bcr", baseline: str = "unified_rust") -> pd.DataFrame:
    """The target: ``arm`` / ``baseline`` at p50 on every op and the per-request total, per workload
    and page size, with the smaller sample size of the two and the ratio's bounds (``lo``, ``hi``:
    the two p50s' order-statistic intervals divided, as the ledger decides)."""
    keep = df[df["arm"].isin([arm, baseline])]
    values = ["us_p50", "us_p50_lo", "us_p50_hi", "n"]
    wide = keep.pivot_table(index=["page_size", "workload", "op"], columns="arm", values=values)
    out = pd.DataFrame(
        {
            arm: wide["us_p50"][arm],
            baseline: wide["us_p50"][baseline],
            "n": wide["n"].min(axis=1).astype(int),
        }
    )
    out["ratio"] = out[arm] / out[baseline]
    out["lo"] = wide["us_p50_lo"][arm] / wide["us_p50_hi"][baseline]
    out["hi"] = wide["us_p50_hi"][arm] / wide["us_p50_lo"][baseline]
    out["met"] = out["ratio"] <= 1.0
    return out.reset_index()


def describe(df: pd.DataFrame) -> Any:
    return target_table(df).to_string(index=False, float_format=lambda v: f"{v:.2f}")
