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

Ops recorded (µs per call): ``match`` (the scheduler's ``match_kv_cache`` call: ``match_prefix``
plus SGLang's key construction and bookkeeping around it, the same for every arm), ``insert`` (time
inside ``insert`` per checkpoint -- RadixCache and UnifiedRadixCache insert twice per checkpoint to
split at the prompt boundary, so per-call counts would flatter them), ``checkpoint`` (the whole
call the scheduler makes), ``path`` (the matched prefix's slot indices, ``prefix_device_indices``)
and ``evict``.  ``tokens`` sums what the op handled (matched tokens for match and path, the key
length for insert and checkpoint, evicted tokens for evict); ``cached_tokens`` is the matched
total of one replay.

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

from bcr.contracts import CACHE_OPS_COLUMNS
from bcr.prefix import sim
from bcr.serving.workloads import TraceRequest, build_workloads


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


def _pool_tokens(trace: list[TraceRequest], page_size: int) -> int:
    """Room for everything the trace could ever hold at once: no eviction during a replay."""
    return sum(-(-r.length // page_size) * page_size + page_size for r in trace)


def _replay(
    engines: dict[str, sim.Engine], trace: list[TraceRequest], concurrency: int, evict_tokens: int
) -> dict[str, list[int]]:
    """All arms through the trace in lockstep, then each drained in lockstep; checks the pools."""
    gc.collect()
    gc.disable()
    try:
        matched = sim.lockstep({a: sim.trace_steps(e, trace, concurrency) for a, e in engines.items()})
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
) -> pd.DataFrame:
    """All arms on one (workload, page size); one row per (arm, op)."""
    arms = list(ops_cfg["arms"])
    concurrency = int(ops_cfg["concurrency"])
    pool = _pool_tokens(trace, page_size)
    context = max(r.length for r in trace) + page_size
    engines: dict[str, sim.Engine] = {}
    for arm in arms:
        pools = sim.make_pools(page_size, pool, concurrency + 1, context)
        cache = sim.make_cache(arm, pools)
        timer = _ArmTimer(ops_cfg.get("clock", "thread_cpu"))
        timer.instrument(cache)
        engines[arm] = sim.Engine(cache, pools, chunk=ops_cfg.get("chunk"), timer=timer)
    warmup, repeats = int(ops_cfg["warmup"]), int(ops_cfg["repeats"])
    matched: dict[str, list[list[int]]] = {arm: [] for arm in arms}
    for rep in range(warmup + repeats):
        measured = rep >= warmup
        for engine in engines.values():
            engine.timer.enabled = measured
        got = _replay(engines, trace, concurrency, int(ops_cfg["evict_tokens"]))
        if measured:
            for arm in arms:
                matched[arm].append(got[arm])
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
            rows.append(
                {
                    "arm": arm,
                    "workload": name,
                    "page_size": page_size,
                    "op": op,
                    "n": len(us),
                    "us_p50": float(np.percentile(us, 50)),
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
    frames = []
    for page_size in ops_cfg["page_sizes"]:
        sim.configure_sglang(int(page_size))
        for name, trace in traces.items():
            frames.append(bench_workload(name, trace, int(page_size), ops_cfg, log))
    return pd.concat(frames, ignore_index=True)


def target_table(df: pd.DataFrame, arm: str = "bcr", baseline: str = "unified_rust") -> pd.DataFrame:
    """The issue's target: ``arm`` / ``baseline`` at p50 for match and insert, per workload and page."""
    keep = df[df["op"].isin(["match", "insert"]) & df["arm"].isin([arm, baseline])]
    wide = keep.pivot_table(index=["page_size", "workload", "op"], columns="arm", values="us_p50")
    wide["ratio"] = wide[arm] / wide[baseline]
    wide["met"] = wide["ratio"] <= 1.0
    return wide.reset_index()


def describe(df: pd.DataFrame) -> Any:
    return target_table(df).to_string(index=False, float_format=lambda v: f"{v:.2f}")
