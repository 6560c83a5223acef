"""One async streaming client for SGLang's ``/generate`` API: what every serving arm is timed with.

It knows the protocol and nothing about the server behind it (SGLang with any cache, or the local
engine): a request is ``POST /generate`` with ``input_ids``, greedy ``sampling_params`` and
``stream: true``; the answer is server-sent events, ``data: {json}`` lines ending with
``data: [DONE]``, each chunk carrying ``output_ids`` (cumulative by default, deltas when the server
runs with ``--incremental-streaming-output``) and ``meta_info`` (``prompt_tokens``,
``cached_tokens``, ``completion_tokens``, ``finish_reason``, and with ``return_logprob``
``output_token_logprobs``: ``[logprob, token id, text]`` per output token).

Per request: TTFT is the time from sending to the first chunk that carries output tokens, E2E the
time to the end of the stream, both on ``time.perf_counter``; ``cached_tokens`` and the output ids
come from the last chunk.  A request that fails -- HTTP error, broken stream, or past its timeout --
becomes a row with ``error`` set, never a dropped row.  Before the measured requests the client
sends the warm-up requests, which are not recorded, and then flushes the server's cache
(``POST /flush_cache``, retried while the server is busy, as SGLang refuses a flush then), so the
measured requests start from an empty cache.  Requests are sent in
order, at most ``concurrency`` in flight, the i-th no earlier than ``i / rate`` seconds after the
first (``rate`` None: as fast as the concurrency allows), so every arm sees the same schedule.
:func:`run_interleaved` sends the same requests to several servers, request by request in rotating
order, so that servers running side by side share the machine's drift.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Sequence

import aiohttp

DONE = "[DONE]"


@dataclasses.dataclass(frozen=True)
class Request:
    request_id: str
    input_ids: list[int]
    max_new_tokens: int
    return_logprob: bool = False  # also the log-probability of each output token (meta_info)


@dataclasses.dataclass
class Result:
    """One request as measured (``error`` None: completed)."""

    request_id: str
    prompt_tokens: int
    cached_tokens: int | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    output_ids: list[int] = dataclasses.field(default_factory=list)
    output_logprobs: list[float] = dataclasses.field(default_factory=list)  # when asked for
    error: str | None = None

    @property
    def output_tokens(self) -> int:
        return len(self.output_ids)


class FlushRefused(RuntimeError):
    """The server kept refusing ``/flush_cache`` (it was never idle) until the deadline."""


def payload(req: Request) -> dict:
    """Greedy generation of exactly ``max_new_tokens`` tokens (EOS ignored), streamed."""
    body = {
        "input_ids": list(req.input_ids),
        "sampling_params": {"max_new_tokens": req.max_new_tokens, "temperature": 0.0, "ignore_eos": True},
        "stream": True,
    }
    if req.return_logprob:
        body["return_logprob"] = True
    return body


async def generate(
    session: aiohttp.ClientSession, url: str, req: Request, timeout_s: float, incremental: bool = False
) -> Result:
    """One streamed request; its row, with ``error`` set if it did not complete."""
    res = Result(req.request_id, prompt_tokens=len(req.input_ids))
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(f"{url}/generate", json=payload(req)) as resp:
                if resp.status != 200:
                    body = (await resp.text())[:200]
                    res.error = f"HTTP {resp.status}: {body}"
                    return res
                done = False
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:") :].strip()
                    if data == DONE:
                        done = True
                        break
                    chunk = json.loads(data)
                    ids = chunk.get("output_ids") or []
                    if ids and res.ttft_s is None:
                        res.ttft_s = time.perf_counter() - t0
                    res.output_ids = res.output_ids + list(ids) if incremental else list(ids)
                    meta = chunk.get("meta_info") or {}
                    if meta.get("cached_tokens") is not None:
                        res.cached_tokens = int(meta["cached_tokens"])
                    if meta.get("prompt_tokens") is not None:
                        res.prompt_tokens = int(meta["prompt_tokens"])
                    lps = [float(x[0]) for x in meta.get("output_token_logprobs") or []]
                    if lps:
                        res.output_logprobs = res.output_logprobs + lps if incremental else lps
                if not done:
                    res.error = "stream ended before [DONE]"
                    return res
        res.e2e_s = time.perf_counter() - t0
        if len(res.output_ids) != req.max_new_tokens:
            res.error = f"{len(res.output_ids)} output tokens, asked for {req.max_new_tokens}"
    except TimeoutError:
        res.error = f"timeout after {timeout_s:g}s"
    except (aiohttp.ClientError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    return res


async def flush(session: aiohttp.ClientSession, url: str, deadline_s: float = 30.0) -> None:
    """``POST /flush_cache`` until the server accepts it (it refuses while requests are running)."""
    end = time.monotonic() + deadline_s
    last = ""
    while True:
        async with session.post(f"{url}/flush_cache") as resp:
            if resp.status == 200:
                return
            last = f"HTTP {resp.status}: {(await resp.text())[:200]}"
        if time.monotonic() >= end:
            raise FlushRefused(f"{url}/flush_cache refused until the deadline ({last})")
        await asyncio.sleep(0.1)


async def run(
    url: str,
    requests: Sequence[Request],
    *,
    concurrency: int = 1,
    rate: float | None = None,
    warmup: Sequence[Request] = (),
    timeout_s: float = 600.0,
    flush_first: bool = True,
    incremental: bool = False,
    progress: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Warm up (unrecorded, one at a time), flush, then every request on the shared schedule; the
    rows in request order.  Flushing after the warm-up leaves the measured requests an empty cache."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive (requests per second) or None, got {rate}")
    limit = aiohttp.TCPConnector(limit=concurrency + 1)
    async with aiohttp.ClientSession(connector=limit, timeout=aiohttp.ClientTimeout(total=None)) as session:
        for req in warmup:
            await generate(session, url, req, timeout_s, incremental)
        if flush_first:
            await flush(session, url)
        gate = asyncio.Semaphore(concurrency)
        start = time.perf_counter()

        async def one(i: int, req: Request) -> Result:
            if rate is not None:
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            async with gate:
                res = await generate(session, url, req, timeout_s, incremental)
            if progress is not None:
                progress(res)
            return res

        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))


async def run_interleaved(
    urls: dict[str, str],
    requests: Sequence[Request],
    *,
    warmup: Sequence[Request] = (),
    timeout_s: float = 600.0,
    flush_first: bool = True,
    incremental: bool = False,
    progress: Callable[[Result], None] | None = None,
) -> dict[str, list[Result]]:
    """The same requests to several servers, one request in flight at a time: request i goes to
    every server in turn before request i+1 goes to any, the turn order rotating with i.  Each
    server sees the whole sequence in order (its cache evolves as in :func:`run` at concurrency 1),
    and drift in the machine's speed lands on every server alike.  Warm-up and flush per server
    first.  The rows per server name, in request order."""
    names = list(urls)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        for name in names:
            for req in warmup:
                await generate(session, urls[name], req, timeout_s, incremental)
            if flush_first:
                await flush(session, urls[name])
        out: dict[str, list[Result]] = {name: [] for name in names}
        for i, req in enumerate(requests):
            for j in range(len(names)):
                name = names[(i + j) % len(names)]
                res = await generate(session, urls[name], req, timeout_s, incremental)
                out[name].append(res)
                if progress is not None:
                    progress(res)
        return out


def run_sync(url: str, requests: Sequence[Request], **kw) -> list[Result]:
    """:func:`run` from synchronous code (a rule's command)."""
    return asyncio.run(run(url, requests, **kw))
