"""The local engine: SGLang's ``/generate`` API on 127.0.0.1, served by the project's own model with a
real SGLang prefix cache over a real token-to-KV pool -- the serving track's CPU default and CI.

Only the cache differs between arms.  Every arm gets the same objects SGLang's scheduler uses
(``ReqToTokenPool``, the token allocator, an ``MHATokenToKVPool`` on the model's device) and the
same calls in the same order (:class:`bcr.prefix.sim.Engine`: ``match_kv_cache``, lock, the
prefix's slot ids, a checkpoint after every prefill chunk but the last, ``release_kv_cache``), on
one schedule: requests are served one at a time in arrival order (FIFO, batch 1).  Reuse is real:
the matched prefix's K/V are read from the pool at the slots the cache returned, only the unmatched
suffix is computed, and every new position's K/V is written back at its allocated slot before the
cache inserts it.  A cache that returns a wrong slot therefore changes the model's output.

The API is the subset the client (:mod:`bcr.serving.client`) and SGLang's own benchmarks use:
``POST /generate`` (``input_ids``, greedy ``sampling_params`` with ``max_new_tokens`` and
``ignore_eos``, ``stream``) answering server-sent events with cumulative ``output_ids`` and
``meta_info`` (``prompt_tokens``, ``cached_tokens``, ``completion_tokens``, ``finish_reason``),
``POST /flush_cache`` (refused with 400 while a request runs, as SGLang does), ``GET /health``.
``SGLANG_RADIX_FORCE_MISS=1`` turns every match into a miss, through SGLang's own
``match_kv_cache``.

``python -m bcr.serving.local --config ... --arm bcr --ready-file F`` binds a free port on
127.0.0.1 and, once the model is loaded and the socket listens, writes ``{"port", "pid"}`` to ``F``
(atomically): whoever started it reads the port from there, so concurrent servers never clash.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from bcr.prefix import sim


class PoolKV:
    """The model's side of :class:`bcr.prefix.sim.Engine`: K/V live in the pool, indexed by slot.

    For the request in flight it keeps a ``DynamicCache`` holding positions ``[0, n)``: the matched
    prefix gathered from the pool at the cache's slots (:meth:`load`), then each computed chunk or
    decode step (:meth:`extend`), whose new K/V are also written into the pool at their slots.
    """

    def __init__(self, model: Any, kv_pool: Any):
        self.model = model
        self.kv_pool = kv_pool
        self.device = next(model.parameters()).device
        self.cache: DynamicCache | None = None
        self.logits: torch.Tensor | None = None  # float32 logits after the last computed position

    def load(self, run: sim.Running, prefix: torch.Tensor) -> None:
        self.cache = DynamicCache()
        self.logits = None
        if len(prefix) == 0:
            return
        slots = prefix.to(self.kv_pool.device)
        for layer in range(self.kv_pool.layer_num):
            k = self.kv_pool.k_buffer[layer][slots].transpose(0, 1).unsqueeze(0)  # [1, kv heads, n, dim]
            v = self.kv_pool.v_buffer[layer][slots].transpose(0, 1).unsqueeze(0)
            self.cache.update(k.to(self.device), v.to(self.device), layer)

    @torch.inference_mode()
    def extend(self, run: sim.Running, start: int, end: int, slots: torch.Tensor) -> None:
        req = run.req
        n = len(req.origin_input_ids)  # positions past the prompt are output tokens fed back
        fill = list(req.origin_input_ids[start:end]) + list(
            req.output_ids[max(0, start - n) : max(0, end - n)]
        )
        if len(fill) != end - start or self.cache.get_seq_length() != start:
            raise RuntimeError(
                f"{req.rid}: positions [{start}, {end}) do not follow the {self.cache.get_seq_length()} held"
            )
        ids = torch.tensor([fill], dtype=torch.long, device=self.device)
        pos = torch.arange(start, end, device=self.device).unsqueeze(0)
        out = self.model(
            input_ids=ids, position_ids=pos, past_key_values=self.cache, use_cache=True, logits_to_keep=1
        )
        self.logits = out.logits[0, -1].float()
        slots = slots.to(self.kv_pool.device)
        for layer in range(self.kv_pool.layer_num):
            held = self.cache.layers[layer]
            self.kv_pool.k_buffer[layer][slots] = (
                held.keys[0, :, start:end].transpose(0, 1).to(self.kv_pool.device)
            )
            self.kv_pool.v_buffer[layer][slots] = (
                held.values[0, :, start:end].transpose(0, 1).to(self.kv_pool.device)
            )

    def next_token(self) -> tuple[int, float]:
        """The greedy token after the last computed position and its log-probability."""
        token = int(self.logits.argmax())
        return token, float(torch.log_softmax(self.logits, dim=-1)[token])


class LocalEngine:
    """One arm's cache, pools and the model: :meth:`generate` serves one request at a time."""

    def __init__(
        self,
        model: Any,
        arm: str,
        *,
        page_size: int,
        kv_tokens: int,
        max_context: int,
        chunk: int | None,
    ):
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

        cfg = model.config
        device = next(model.parameters()).device
        sim.configure_sglang(page_size)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_tokens = -(-kv_tokens // page_size) * page_size
        self.kv_pool = MHATokenToKVPool(
            size=kv_tokens,
            page_size=page_size,
            dtype=next(model.parameters()).dtype,
            head_num=cfg.num_key_value_heads,
            head_dim=head_dim,
            layer_num=cfg.num_hidden_layers,
            device=str(device),
            enable_memory_saver=False,
        )
        self.pools = sim.make_pools(
            page_size,
            kv_tokens,
            max_reqs=2,
            max_context=max_context,
            device=str(device),
            kvcache=self.kv_pool,
        )
        self.cache = sim.make_cache(arm, self.pools)
        self.hooks = PoolKV(model, self.kv_pool)
        self.engine = sim.Engine(self.cache, self.pools, chunk=chunk, model=self.hooks)
        self.arm = arm
        self.max_context = max_context

    @property
    def busy(self) -> bool:
        return bool(self.engine.running)

    def generate(
        self, input_ids: list[int], max_new_tokens: int, rid: str | None = None
    ) -> Iterator[tuple[int, int, float]]:
        """Yield ``(token, cached_tokens, logprob)`` for each greedy output token (its float32
        log-probability under the logits that chose it).  The request is released
        (with its checkpoint) when the last token is out -- also if the caller stops listening
        early, so the cache never keeps a half-served request."""
        if len(input_ids) + max_new_tokens > self.max_context:
            raise ValueError(
                f"{len(input_ids)} prompt + {max_new_tokens} new tokens exceed the context {self.max_context}"
            )
        engine, hooks = self.engine, self.hooks
        run = engine.start(input_ids, max_new_tokens, rid=rid)
        listening = True
        try:
            engine.prefill(run)
            while True:
                token, logprob = hooks.next_token()
                done = engine.emit(run, token)
                if listening:
                    try:
                        yield token, run.matched, logprob
                    except GeneratorExit:
                        listening = False
                if done:
                    break
            engine.finish(run)
        except BaseException:
            if run.req.rid in engine.running:  # a failed step: drop the request without inserting
                self._abort(run)
            raise
        finally:
            hooks.cache = None

    def _abort(self, run: sim.Running) -> None:
        from sglang.srt.mem_cache.common import release_kv_cache

        release_kv_cache(run.req, self.cache, checkpoint=False)
        del self.engine.running[run.req.rid]

    def flush(self) -> bool:
        """Empty the cache and the pools, as SGLang's ``flush_cache``; refused (False) while busy."""
        if self.busy:
            return False
        self.cache.reset()
        self.pools.req_to_token_pool.clear()
        self.pools.allocator.clear()
        return True


# --- the HTTP server ---------------------------------------------------------------------------------


def _meta(
    prompt_tokens: int,
    cached: int,
    ids: list[int],
    logprobs: list[float] | None,
    finished: bool,
    max_new: int,
) -> dict:
    meta = {
        "id": "",
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached,
        "completion_tokens": len(ids),
        "finish_reason": {"type": "length", "length": max_new} if finished else None,
    }
    if logprobs is not None:
        meta["output_token_logprobs"] = [[lp, t, None] for lp, t in zip(logprobs, ids, strict=True)]
    return meta


def _chunk(
    ids: list[int],
    logprobs: list[float] | None,
    prompt_tokens: int,
    cached: int,
    finished: bool,
    max_new: int,
) -> bytes:
    meta = _meta(prompt_tokens, cached, ids, logprobs, finished, max_new)
    return b"data: " + json.dumps({"text": "", "output_ids": ids, "meta_info": meta}).encode() + b"\n\n"


def _parse(body: Any) -> tuple[list[int], int, bool, bool]:
    """(input_ids, max_new_tokens, stream, return_logprob) of a /generate body; ValueError naming
    the bad field."""
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    ids = body.get("input_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and t >= 0 for t in ids):
        raise ValueError("input_ids must be a non-empty list of token ids (this engine has no tokenizer)")
    sp = body.get("sampling_params") or {}
    max_new = sp.get("max_new_tokens", 128)
    if not isinstance(max_new, int) or max_new < 1:
        raise ValueError("sampling_params.max_new_tokens must be a positive integer")
    if float(sp.get("temperature", 0.0)) != 0.0:
        raise ValueError("only greedy decoding is served (sampling_params.temperature 0)")
    if not sp.get("ignore_eos", False):
        raise ValueError("this engine emits exactly max_new_tokens: send sampling_params.ignore_eos true")
    return ids, max_new, bool(body.get("stream", False)), bool(body.get("return_logprob", False))


def make_app(engine: LocalEngine) -> Any:
    from aiohttp import web

    lock = asyncio.Lock()  # FIFO: one request at a time, in arrival order
    counter = iter(range(1 << 62))

    async def generate(request: web.Request) -> web.StreamResponse:
        try:
            ids, max_new, stream, want_lp = _parse(await request.json())
        except (ValueError, json.JSONDecodeError) as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        if len(ids) + max_new > engine.max_context:
            msg = f"{len(ids)} prompt + {max_new} new tokens exceed the context {engine.max_context}"
            return web.json_response({"error": {"message": msg}}, status=400)
        async with lock:
            rid = f"req-{next(counter)}"
            tokens: list[int] = []
            lps: list[float] | None = [] if want_lp else None
            gen = engine.generate(ids, max_new, rid=rid)
            cached = 0
            if not stream:
                for token, cached, lp in gen:  # noqa: B007 -- the last one is the meta's
                    tokens.append(token)
                    if lps is not None:
                        lps.append(lp)
                    await asyncio.sleep(0)
                meta = _meta(len(ids), cached, tokens, lps, True, max_new)
                return web.json_response({"text": "", "output_ids": tokens, "meta_info": meta})
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await resp.prepare(request)
            try:
                for token, cached, lp in gen:
                    tokens.append(token)
                    if lps is not None:
                        lps.append(lp)
                    await resp.write(_chunk(tokens, lps, len(ids), cached, len(tokens) == max_new, max_new))
                await resp.write(b"data: [DONE]\n\n")
            except (ConnectionResetError, asyncio.CancelledError):
                gen.close()  # the request is still served to the end and released
                raise
            return resp

    async def flush_cache(request: web.Request) -> web.Response:
        if lock.locked() or not engine.flush():
            return web.Response(status=400, text="Cache not flushed: requests are running")
        return web.Response(text="Cache flushed.\n")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/generate", generate)
    app.router.add_post("/flush_cache", flush_cache)
    app.router.add_get("/flush_cache", flush_cache)
    app.router.add_get("/health", health)
    app.router.add_get("/health_generate", health)
    return app


async def serve(engine: LocalEngine, host: str, ready_file: Path | None) -> None:
    """Listen on a free port of ``host`` until SIGTERM/SIGINT; announce the port in ``ready_file``."""
    from aiohttp import web

    from bcr import io

    runner = web.AppRunner(make_app(engine), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"local engine ({engine.arm}) listening on http://{host}:{port}", flush=True)
    if ready_file is not None:
        io.write_json({"port": port, "pid": os.getpid(), "arm": engine.arm}, ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    from bcr import config as cfgmod
    from bcr.cliutil import add_config_arg, load_config
    from bcr.models import load_model
    from bcr.runtime import setup_runtime

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arg(p)
    p.add_argument("--arm", required=True)
    p.add_argument("--ready-file", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("the local engine binds the loopback interface only")
    config = load_config(args)
    device = setup_runtime(config["runtime"])
    local = config["serving"]["local"]
    loaded = load_model(config["model"], device, root=cfgmod.REPO_ROOT)
    engine = LocalEngine(
        loaded.model,
        args.arm,
        page_size=int(config["serving"]["server"].get("page_size", 16)),
        kv_tokens=int(local["kv_tokens"]),
        max_context=int(config["model"]["max_context"]),
        chunk=local.get("chunk"),
    )
    asyncio.run(serve(engine, args.host, args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
