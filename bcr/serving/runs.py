"""One workload through every arm's server, every arm on the same requests: the request-level serving rows.

Every arm gets its own fresh server; the client sends it the warm-up requests, flushes its cache
and sends the workload's requests on the shared schedule (``serving.run``: concurrency, rate,
timeout).  A ``force_miss`` pass gives every arm a server with ``SGLANG_RADIX_FORCE_MISS=1`` (0%
reuse) instead, written under ``serving/{engine}/force_miss/...`` so nothing reads it as an arm.
Two schedules:

* **interleaved** (the local engine at concurrency 1, no rate): all servers are started together and
  waited for before the first request (an idle one takes no CPU); then request i goes to every
  server in turn, the order rotating (:func:`bcr.serving.client.run_interleaved`), so the machine's
  drift lands on every arm alike and each server still sees the whole sequence in order;
* **sequential** (SGLang on a GPU, where one server fits at a time): one arm after another.

Every server must still be alive at the end of its run, or the run fails with the tail of its log;
rows are written (atomically) only after every server survived, so a file exists only for a whole
run.

The warm-up requests are random prompts of the workload's typical length drawn from their own seed,
sent before the flush, so the measured requests meet an empty cache and every arm the same one.
Sequential arms run in the configured order rotated by the workload's position, so no arm is always
first on a machine that drifts.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from bcr.contracts import SERVING_REQUEST_COLUMNS
from bcr.serving import client, servers
from bcr.serving.workloads import WORKLOADS, TraceRequest, build_workload


def requests_of(trace: list[TraceRequest], return_logprob: bool = False) -> list[client.Request]:
    """The client's requests: the trace's prompts, asking for as many tokens as its outputs."""
    return [client.Request(r.rid, [int(t) for t in r.prompt], len(r.output), return_logprob) for r in trace]


def warmup_requests(trace: list[TraceRequest], serving: dict, n: int) -> list[client.Request]:
    """``n`` random prompts as long as the trace's median request, from a seed of their own."""
    if n <= 0:
        return []
    low, high = serving["token_range"]
    rng = np.random.default_rng([int(serving["seed"]), zlib.crc32(b"warmup")])
    length = int(np.median([len(r.prompt) for r in trace]))
    new = len(trace[0].output)
    return [
        client.Request(f"warmup-{i}", rng.integers(low, high, size=length).tolist(), new) for i in range(n)
    ]


def arm_order(arms: list[str], workload: str) -> list[str]:
    """The configured order, rotated by the workload's position in :data:`WORKLOADS`."""
    k = WORKLOADS.index(workload) % len(arms) if workload in WORKLOADS else 0
    return arms[k:] + arms[:k]


def rows(
    results: list[client.Result], *, workload: str, arm: str, engine: str, force_miss: bool
) -> pd.DataFrame:
    recs = [
        {
            "workload": workload,
            "arm": arm,
            "engine": engine,
            "force_miss": force_miss,
            "order": i,
            "request_id": r.request_id,
            "prompt_tokens": r.prompt_tokens,
            "cached_tokens": r.cached_tokens,
            "ttft_s": r.ttft_s,
            "e2e_s": r.e2e_s,
            "output_tokens": r.output_tokens,
            "output_ids": [int(t) for t in r.output_ids],
            "output_logprobs": [float(x) for x in r.output_logprobs],
            "error": r.error,
        }
        for i, r in enumerate(results)
    ]
    df = pd.DataFrame(recs, columns=SERVING_REQUEST_COLUMNS)
    df["cached_tokens"] = df["cached_tokens"].astype("Int64")  # None for a failed request
    for col in ("ttft_s", "e2e_s"):
        df[col] = df[col].astype("float64")
    df["error"] = df["error"].astype("string")
    return df


def serve_arm(
    srv: servers.Server,
    requests: list[client.Request],
    warmup: list[client.Request],
    run_cfg: dict,
    label: str,
) -> list[client.Result]:
    """The client's whole run against one server, with a progress bar; the server must survive it."""
    from tqdm.auto import tqdm

    with tqdm(total=len(requests), desc=label, unit="req", mininterval=2.0) as bar:
        results = client.run_sync(
            srv.url,
            requests,
            concurrency=int(run_cfg["concurrency"]),
            rate=run_cfg.get("rate"),
            warmup=warmup,
            timeout_s=float(run_cfg["timeout_s"]),
            progress=lambda _r: bar.update(1),
        )
    srv.check_alive()
    return results


def run_workload(
    *,
    engine: str,
    workload: str,
    arms: list[str],
    configs: list[str],
    config: dict,
    out: Callable[[str, bool], Path],
    log_dir: Path,
    force_miss: bool,
    write: Callable[[pd.DataFrame, Path], None],
    log: Callable[[str], None] = print,
    return_logprob: bool = False,
) -> dict[tuple[str, bool], pd.DataFrame]:
    """Every arm on ``workload`` (at 0% reuse with ``force_miss``); ``out(arm, force_miss)`` is where
    its rows go.  Raises :class:`bcr.serving.servers.ServerFailed` at the first server that fails."""
    serving = config["serving"]
    run_cfg = serving["run"]
    trace = build_workload(workload, serving)
    requests = requests_of(trace, return_logprob)
    warmup = warmup_requests(trace, serving, int(run_cfg["warmup"]))
    plan = [(arm, force_miss) for arm in arm_order(list(arms), workload)]
    interleave = engine == "local" and int(run_cfg["concurrency"]) == 1 and run_cfg.get("rate") is None
    with servers.stopped_on_exit() as started:

        def launch(arm: str, fm: bool) -> servers.Server:
            srv = servers.start(
                engine,
                configs=configs,
                config=config,
                arm=arm,
                log=log_dir / f"{_tag(arm, fm)}.log",
                force_miss=fm,
            )
            started.append(srv)
            return srv

        if interleave:
            results = _interleaved({key: launch(*key) for key in plan}, requests, warmup, run_cfg, workload)
        else:
            results = {}
            for key in plan:
                srv = launch(*key)
                srv.wait_healthy()
                results[key] = serve_arm(srv, requests, warmup, run_cfg, f"{workload} {_tag(*key)}")
                srv.stop()
    done: dict[tuple[str, bool], pd.DataFrame] = {}
    for (arm, fm), res in results.items():
        df = rows(res, workload=workload, arm=arm, engine=engine, force_miss=fm)
        write(df, out(arm, fm))
        bad = int(df["error"].notna().sum())
        log(
            f"{workload} {_tag(arm, fm)}: {len(df)} requests, {bad} failed, cached "
            f"{int(df['cached_tokens'].sum())} tokens, TTFT p50 {np.nanmedian(df['ttft_s']) * 1e3:.1f} ms"
        )
        done[(arm, fm)] = df
    return done


def _tag(arm: str, force_miss: bool) -> str:
    return f"{arm}.force_miss" if force_miss else arm


def _interleaved(
    fleet: dict[tuple[str, bool], servers.Server],
    requests: list[client.Request],
    warmup: list[client.Request],
    run_cfg: dict,
    workload: str,
) -> dict[tuple[str, bool], list[client.Result]]:
    """Every server up (and healthy) before the first request; then request by request to each."""
    import asyncio

    from tqdm.auto import tqdm

    for srv in fleet.values():
        srv.wait_healthy()
    urls = {_tag(*key): srv.url for key, srv in fleet.items()}
    with tqdm(
        total=len(requests) * len(fleet),
        desc=f"{workload} ({len(fleet)} servers)",
        unit="req",
        mininterval=2.0,
    ) as bar:
        got = asyncio.run(
            client.run_interleaved(
                urls,
                requests,
                warmup=warmup,
                timeout_s=float(run_cfg["timeout_s"]),
                progress=lambda _r: bar.update(1),
            )
        )
    for srv in fleet.values():
        srv.check_alive()
    return {key: got[_tag(*key)] for key in fleet}
