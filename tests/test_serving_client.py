"""The streaming client against a server that speaks SGLang's /generate protocol (in-process,
127.0.0.1, a free port): timing points, cached tokens, both chunk styles, the schedule, and every
failure kept as a row."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
from aiohttp import web

from bcr.serving import client


class FakeServer:
    """/generate streams ``max_new_tokens`` ids (id = prompt length + step), ``step_s`` apart, with
    ``meta_info.cached_tokens`` = half the prompt; behaviour switches per request by its first id."""

    SLOW, BROKEN, FAIL, SHORT = 1, 2, 3, 4

    def __init__(self, incremental: bool = False, step_s: float = 0.01, busy_flushes: int = 0):
        self.incremental, self.step_s, self.busy_flushes = incremental, step_s, busy_flushes
        self.in_flight = self.max_in_flight = 0
        self.flushes = 0
        self.order: list[int] = []

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        ids, n = body["input_ids"], body["sampling_params"]["max_new_tokens"]
        assert body["stream"] is True and body["sampling_params"]["temperature"] == 0.0
        self.order.append(len(ids))
        if ids[0] == self.FAIL:
            return web.Response(status=500, text="boom")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            out = []
            steps = n - 1 if ids[0] == self.SHORT else n
            for i in range(steps):
                await asyncio.sleep(self.step_s * (50 if ids[0] == self.SLOW else 1))
                out.append(len(ids) + i)
                chunk = {
                    "output_ids": [out[-1]] if self.incremental else list(out),
                    "meta_info": {"prompt_tokens": len(ids), "cached_tokens": len(ids) // 2},
                }
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if ids[0] == self.BROKEN and i == 1:
                    return resp  # the stream ends without [DONE]
            await resp.write(b"data: [DONE]\n\n")
        finally:
            self.in_flight -= 1
        return resp

    async def flush_cache(self, request: web.Request) -> web.Response:
        self.flushes += 1
        if self.flushes <= self.busy_flushes:
            return web.Response(status=400, text="not idle")
        return web.Response(text="Cache flushed.")


@pytest.fixture
def serve():
    """Start a FakeServer on a free port in a thread; yields (url, server)."""
    started = []

    def start(fake: FakeServer):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/generate", fake.generate)
        app.router.add_post("/flush_cache", fake.flush_cache)
        runner = web.AppRunner(app)
        ready = threading.Event()

        def main():
            asyncio.set_event_loop(loop)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        assert ready.wait(10)
        started.append((loop, runner, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for loop, runner, thread in started:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _reqs(lengths, n=4, first=10):
    return [client.Request(f"r{i}", [first] * k, n) for i, k in enumerate(lengths)]


@pytest.mark.parametrize("incremental", [False, True])
def test_a_stream_gives_ttft_before_e2e_its_tokens_and_cached_tokens(serve, incremental):
    fake = FakeServer(incremental=incremental)
    url = serve(fake)
    got = client.run_sync(url, _reqs([8, 12]), incremental=incremental)
    assert [r.request_id for r in got] == ["r0", "r1"]
    for r, k in zip(got, [8, 12], strict=True):
        assert r.error is None
        assert r.output_ids == [k, k + 1, k + 2, k + 3] and r.output_tokens == 4
        assert r.cached_tokens == k // 2 and r.prompt_tokens == k
        assert 0 < r.ttft_s < r.e2e_s
        assert r.e2e_s - r.ttft_s >= 3 * fake.step_s * 0.9  # three more steps after the first token
    assert fake.flushes == 1


def test_concurrency_and_rate_shape_the_schedule(serve):
    fake = FakeServer(step_s=0.02)
    url = serve(fake)
    got = client.run_sync(url, _reqs(range(5, 11)), concurrency=2)
    assert fake.max_in_flight == 2 and all(r.error is None for r in got)
    assert fake.order == list(range(5, 11))  # sent in request order
    fake2 = FakeServer(step_s=0.001)
    url2 = serve(fake2)
    t0 = time.perf_counter()
    client.run_sync(url2, _reqs(range(5, 10)), concurrency=8, rate=20.0)
    assert time.perf_counter() - t0 >= 4 / 20.0  # the fifth request waits for its arrival time


def test_failures_are_rows_with_their_error_and_the_rest_completes(serve):
    url = serve(FakeServer())
    reqs = [
        client.Request("ok", [10] * 6, 4),
        client.Request("fail", [FakeServer.FAIL] * 6, 4),
        client.Request("broken", [FakeServer.BROKEN] * 6, 4),
        client.Request("short", [FakeServer.SHORT] * 6, 4),
        client.Request("slow", [FakeServer.SLOW] * 6, 4),
    ]
    got = {r.request_id: r for r in client.run_sync(url, reqs, concurrency=5, timeout_s=0.3)}
    assert len(got) == 5
    assert got["ok"].error is None
    assert got["fail"].error.startswith("HTTP 500") and "boom" in got["fail"].error
    assert got["broken"].error == "stream ended before [DONE]"
    assert got["short"].error == "3 output tokens, asked for 4"
    assert got["slow"].error == "timeout after 0.3s" and got["slow"].e2e_s is None


def test_warmup_is_not_recorded_and_a_busy_flush_is_retried(serve):
    fake = FakeServer(busy_flushes=2)
    url = serve(fake)
    got = client.run_sync(url, _reqs([8]), warmup=_reqs([3, 4]))
    assert [r.request_id for r in got] == ["r0"] and fake.order == [3, 4, 8]
    assert fake.flushes == 3  # refused twice while "busy", then accepted


def test_bad_schedule_arguments_are_refused():
    with pytest.raises(ValueError, match="concurrency"):
        client.run_sync("http://127.0.0.1:9", [], concurrency=0)
    with pytest.raises(ValueError, match="rate"):
        client.run_sync("http://127.0.0.1:9", [], rate=0)
