"""kvpress presses on our prompts, in the peer environment only (``python -m bcr.peers.runner``).

The protocol is ``KVPressTextGenerationPipeline``'s on token ids (our tiny models have no tokenizer):
the press compresses during the prefill, greedy decoding reads the compressed cache at the prompt's
logical positions.  ``question_agnostic`` is the pipeline's own order (the context is prefilled and
compressed, then the question is fed through the cache); ``question_aware`` prefills context and
question in one forward under the press, so the question is compressed with them.

One dense prefill per prompt and mode serves every press: a forward hook records what each attention
layer's hook receives (its kwargs, its output, the layer's K/V), and each press then runs kvpress's
own ``forward_hook`` on exactly those arguments inside ``press(model)`` (its set-up).  During a
prefill a press's hook changes only the cache, never the layer's output, so this computes what
``with press(model): model(...)`` computes, at one prefill for all presses instead of one each
(tests/peers check the caches are identical, and the tokens equal the pipeline's on a word-level
tokenizer).  ``exact`` compares with a dense run of the same mode in this same environment.

Imports nothing of bcr but its pure modules (contracts, prompts, io): this interpreter has other
versions of transformers and pandas than the main environment.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bcr import io
from bcr.contracts import QUERY_MODES
from bcr.prompts import answer_correct, answer_span, question_split

QUESTION_AWARE, QUESTION_AGNOSTIC = QUERY_MODES


@dataclass(frozen=True)
class Press:
    """A kvpress press by class name; ``wraps``: the scorer a wrapper press is built around (it gets
    the compression ratio).  Whether it replays on one shared prefill or needs its own call (KVzip's
    reconstruction passes), and whether it frees or masks, is read off the press itself."""

    cls: str
    wraps: str | None = None


# Our press names -> kvpress 0.5.5 presses that run here: every ScorerPress that needs no hub
# weights, eager attention or a text delimiter, the head-wise and merging wrappers around the
# strongest scorer of the last full run (KeyDiff), and KVzip's context reconstruction.  Left out:
# KVzapPress, QFilterPress, ExpectedAttentionStatsPress and DuoAttentionPress (weights or statistics
# from a hub), ObservedAttentionPress (eager attention weights), FinchPress (a delimiter token in
# the text), and the decoding-time presses (they compress while decoding, not the prefill).
PRESSES = {
    "streaming_llm": Press("StreamingLLMPress"),
    "snapkv": Press("SnapKVPress"),
    "knorm": Press("KnormPress"),
    "expected_attention": Press("ExpectedAttentionPress"),
    "tova": Press("TOVAPress"),
    "keydiff": Press("KeyDiffPress"),
    "random": Press("RandomPress"),
    "lagkv": Press("LagKVPress"),
    "cur": Press("CURPress"),
    "leverage_score": Press("LeverageScorePress"),
    "compactor": Press("CompactorPress"),
    "pyramidkv": Press("PyramidKVPress"),
    "non_causal_attn": Press("NonCausalAttnPress"),
    "cap": Press("CapPress"),
    "criticalkv_keydiff": Press("CriticalKVPress", wraps="KeyDiffPress"),
    "adakv_keydiff": Press("AdaKVPress", wraps="KeyDiffPress"),
    "critical_adakv_keydiff": Press("CriticalAdaKVPress", wraps="KeyDiffPress"),
    "merging_keydiff": Press("MergingPress", wraps="KeyDiffPress"),
    "block_keydiff": Press("BlockPress", wraps="KeyDiffPress"),
    "chunkkv_keydiff": Press("ChunkKVPress", wraps="KeyDiffPress"),
    "kvzip": Press("KVzipPress"),
}


def make_press(name: str, compression_ratio: float, options: dict | None = None) -> Any:
    """A kvpress press by our name; ``compression_ratio`` is kvpress's: the fraction removed.
    A wrapper's ``options`` go to the wrapper; its scorer gets the ratio."""
    import kvpress

    if name not in PRESSES:
        raise ValueError(f"unknown press {name!r}; known: {', '.join(PRESSES)}")
    spec = PRESSES[name]
    cls = getattr(kvpress, spec.cls)
    if spec.wraps is None:
        return cls(compression_ratio=compression_ratio, **(options or {}))
    return cls(press=getattr(kvpress, spec.wraps)(compression_ratio=compression_ratio), **(options or {}))


def own_call(press: Any) -> bool:
    """A press whose context manager does more than install its prefill hook (KVzip replays the
    context after it): it runs for real, its own prefill, instead of on the shared one."""
    import kvpress

    return type(press).__call__ is not kvpress.BasePress.__call__


def clear_masks(model: Any) -> None:
    """Head-wise presses (AdaKV, KVzip) leave ``masked_key_indices`` on the attention modules for
    kvpress's attention patch to apply while decoding; the next run must not inherit them."""
    for attn in attention_layers(model):
        attn.masked_key_indices = None


def masked_entries(model: Any) -> int:
    """(KV head, token) entries the attention modules mask (a masking press keeps them stored)."""
    return sum(
        int(m[2].numel()) for a in attention_layers(model) if (m := getattr(a, "masked_key_indices", None))
    )


@dataclass
class Capture:
    """One dense prefill: what each attention layer's forward hook saw, and the last logits."""

    length: int
    layers: list[tuple[Any, dict, Any, torch.Tensor, torch.Tensor]]  # module, kwargs, output, K, V
    cache: Any  # the dense DynamicCache the prefill filled
    logits: torch.Tensor
    seconds: float


def sync(device: torch.device) -> None:
    """On CUDA, wait for the queued kernels before a clock is read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attention_layers(model: Any) -> list[Any]:
    return [layer.self_attn for layer in model.model.layers]


@torch.inference_mode()
def capture(model: Any, ids: torch.Tensor) -> Capture:
    """Prefill ``ids`` [1, n] densely, recording every attention layer's hook arguments."""
    from transformers import DynamicCache

    layers = attention_layers(model)
    seen: list[Any] = [None] * len(layers)

    def recorder(i: int) -> Callable:
        def hook(module: Any, args: Any, kwargs: dict, output: Any) -> None:
            layer = kwargs["past_key_values"].layers[i]
            seen[i] = (module, dict(kwargs), output, layer.keys, layer.values)

        return hook

    handles = [a.register_forward_hook(recorder(i), with_kwargs=True) for i, a in enumerate(layers)]
    cache = DynamicCache()
    try:
        t0 = time.perf_counter()
        out = model(input_ids=ids, past_key_values=cache, logits_to_keep=1)
        sync(ids.device)
        seconds = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    return Capture(ids.shape[1], seen, cache, out.logits[0, -1].float(), seconds)


@torch.inference_mode()
def compress(press: Any, model: Any, cap: Capture) -> Any:
    """The cache ``with press(model)`` would leave after the captured prefill: kvpress's own hook on
    each layer's recorded arguments, over a fresh cache holding that layer's dense K/V."""
    from transformers import DynamicCache

    cache = DynamicCache()
    with press(model):  # post_init_from_model, rotary embeddings on the layers: the press's set-up
        for i, (module, kwargs, output, keys, values) in enumerate(cap.layers):
            cache.update(keys, values, i)
            press.forward_hook(module, (), {**kwargs, "past_key_values": cache}, output)
    return cache


def cache_tokens(cache: Any) -> tuple[int, int]:
    """(tokens summed over layers, bytes of keys and values)."""
    tokens = sum(int(layer.keys.shape[-2]) for layer in cache.layers)
    nbytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    return tokens, nbytes


@torch.inference_mode()
def greedy(
    model: Any, cache: Any, position: int, n: int, *, feed: torch.Tensor | None = None, first: Any = None
) -> tuple[list[int], list[float]]:
    """``n`` greedy tokens from ``cache``: first fed ``feed`` (the question) at logical positions from
    ``position`` (the pipeline's ``generate_answer``), or the first token is ``argmax(first)``.

    Positions are logical (the prompt's), never the compressed cache's length.  Returns the tokens
    and each decode step's seconds.
    """
    steps: list[float] = []
    dev = model.device
    if feed is not None:
        pos = torch.arange(position, position + feed.shape[1], device=dev).unsqueeze(0)
        out = model(input_ids=feed, past_key_values=cache, position_ids=pos, logits_to_keep=1)
        tokens = [int(out.logits[0, -1].argmax())]
        position += feed.shape[1]
    else:
        tokens = [int(first.argmax())]
    for i in range(n - 1):
        t0 = time.perf_counter()
        out = model(
            input_ids=torch.tensor([[tokens[-1]]], device=dev),
            past_key_values=cache,
            position_ids=torch.tensor([[position + i]], device=dev),
        )
        tokens.append(int(out.logits[0, -1].argmax()))  # .item() synchronises before the clock
        steps.append(time.perf_counter() - t0)
    return tokens, steps


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def word_tokenizer(vocab_size: int, bos_id: int, eos_id: int) -> Any:
    """A word-level tokenizer for the synthetic vocabulary: id ``i`` is the word ``t{i}``, BOS and
    EOS are special words (``<s>``, ``</s>``), so text the pipeline builds round-trips to our ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = {bos_id: "<s>", eos_id: "</s>"}
    vocab = {special.get(i, f"t{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special.get(0, "t0")))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def pipeline_answer(model: Any, tokenizer: Any, row: dict, press: Any, n: int) -> str:
    """kvpress's own ``KVPressTextGenerationPipeline`` on the prompt rendered as words (agnostic).

    The pipeline prepends the tokenizer's BOS to the context and stops at EOS; the prompt's first
    token must be that BOS.
    """
    from kvpress import KVPressTextGenerationPipeline

    ids, split = list(row["input_ids"]), question_split(row)
    if ids[0] != tokenizer.bos_token_id:
        raise ValueError(f"prompt {row['prompt_id']} does not start with BOS ({tokenizer.bos_token_id})")
    words = tokenizer.convert_ids_to_tokens(ids)
    pipe = KVPressTextGenerationPipeline(model=model, tokenizer=tokenizer)
    out = pipe(" ".join(words[1:split]), question=" ".join(words[split:]), press=press, max_new_tokens=n)
    return out["answer"]


def as_pipeline_answer(tokenizer: Any, tokens: list[int], eos_id: int) -> str:
    """Our greedy tokens as the pipeline reports them: cut after the first EOS, decoded."""
    cut = tokens[: tokens.index(eos_id) + 1] if eos_id in tokens else tokens
    return str(tokenizer.decode(cut, skip_special_tokens=True))


def load_model(spec: dict) -> Any:
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, spec.get("dtype", "float32"))
    model = AutoModelForCausalLM.from_pretrained(
        spec["path"], dtype=dtype, attn_implementation=spec.get("attn_implementation", "sdpa")
    )
    cfg = model.config
    if getattr(cfg, "head_dim", None) is None:  # what the model computes anyway; CriticalKV reads it
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    return model.to(spec.get("device", "cpu")).eval()


def hook_equal(model: Any, press: Any, ids: torch.Tensor, replayed: Any, seed: int = 0) -> bool:
    """Whether the replayed cache (and, for a masking press, its masks) equals what ``with
    press(model)`` leaves after a real prefill from the same random state (``seed``: the draws of
    Random, CUR, Compactor and LeverageScore); the replayed masks stay in place for decoding."""
    from transformers import DynamicCache

    layers = attention_layers(model)
    mine = [getattr(a, "masked_key_indices", None) for a in layers]
    clear_masks(model)
    real = DynamicCache()
    torch.manual_seed(seed)
    with torch.inference_mode(), press(model):
        model(input_ids=ids, past_key_values=real, logits_to_keep=1)
    theirs = [getattr(a, "masked_key_indices", None) for a in layers]
    for a, m in zip(layers, mine, strict=True):
        a.masked_key_indices = m
    same_masks = all(
        (x is None and y is None)
        or (x is not None and y is not None and all(torch.equal(u, v) for u, v in zip(x, y, strict=True)))
        for x, y in zip(mine, theirs, strict=True)
    )
    return same_masks and all(
        torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        for a, b in zip(replayed.layers, real.layers, strict=True)
    )


def dense_run(
    model: Any, ids: torch.Tensor, split: int, mode: str, n: int
) -> tuple[Capture, list[int], float, float]:
    """One dense prefill (captured) and greedy decode in ``mode``: (capture, tokens, TTFT, TPOT)."""
    if mode == QUESTION_AGNOSTIC:
        cap = capture(model, ids[:, :split])
        t0 = time.perf_counter()
        tokens, steps = greedy(model, cap.cache, split, n, feed=ids[:, split:])
        ttft = cap.seconds + (time.perf_counter() - t0) - sum(steps)
    else:
        cap = capture(model, ids)
        tokens, steps = greedy(model, cap.cache, ids.shape[1], n, first=cap.logits)
        ttft = cap.seconds
    return cap, tokens, ttft, (sum(steps) / len(steps) if steps else math.nan)


@torch.inference_mode()
def own_prefill(press: Any, model: Any, ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """``with press(model): model(ids)`` -- kvpress's own call, for a press that needs it: the
    cache it leaves and the prefill's last logits."""
    from transformers import DynamicCache

    cache = DynamicCache()
    with press(model):
        out = model(input_ids=ids, past_key_values=cache, logits_to_keep=1)
    return cache, out.logits[0, -1].float()


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or not b > 0 else a / b


def run_prompt(
    model: Any,
    row: dict,
    plan: list[dict],
    job: dict,
    log: Callable[[str], None],
    check: bool = False,
    turn: int = 0,
) -> list[dict]:
    """Every press of the plan on one prompt, in both modes; one row per (press, point, mode).

    With ``check`` (synthetic prompts), each question-aware cache is compared with a real hooked
    prefill's (``hook_equal``) and each question-agnostic answer with kvpress's pipeline on a
    word-level tokenizer (``pipeline_equal``).  A timed job also times a dense run before and after
    the presses (their order rotated by ``turn``, the prompt's index), and each press's TTFT and
    TPOT are ratios to the mean of the two.
    """
    n = int(job["max_new_tokens"])
    timed = bool(job.get("timed", True))
    seed = int(job.get("seed", 0))
    ids = torch.tensor([list(row["input_ids"])], dtype=torch.long, device=model.device)
    split = question_split(row)
    if split is None:
        raise ValueError(f"prompt {row['prompt_id']}: no question_start, so no question-agnostic mode")
    tokenizer = None  # synthetic prompts: the answer span is the value and EOS (bcr.prompts)
    cfg = model.config
    hk = int(cfg.num_key_value_heads)
    words = word_tokenizer(cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id) if check else None
    rows = []
    for mode in job["query_modes"]:
        clear_masks(model)
        cap, dense, dense_ttft, dense_tpot = dense_run(model, ids, split, mode, n)
        question = ids[:, split:] if mode == QUESTION_AGNOSTIC else None
        span = answer_span(dense, row, tokenizer)
        logical = cap.length * len(cap.layers)
        dense_bytes = sum(k.nbytes + v.nbytes for *_, k, v in cap.layers)
        points = [p for p in plan if p["query_mode"] == mode]
        if timed and points:
            k = turn % len(points)
            points = points[k:] + points[:k]
        mode_rows = []
        for point in points:
            base = {
                "press": point["press"],
                "compression_ratio": point["compression_ratio"],
                "setting_matched": point["setting"],
                "target_stored_fraction": point["stored_fraction"],
                "query_mode": mode,
                "workload": row["workload"],
                "context": int(row["context"]),
                "prompt_id": row["prompt_id"],
                "dense_answer_correct": answer_correct(dense, row, tokenizer),
            }
            clear_masks(model)
            torch.manual_seed(seed)  # a press that draws (random sketches) draws the same every time
            try:
                press = make_press(point["press"], point["compression_ratio"], point.get("options"))
                replayed = not own_call(press)
                t0 = time.perf_counter()
                if replayed:
                    cache, first_logits, prefill_s = compress(press, model, cap), cap.logits, cap.seconds
                else:
                    cache, first_logits = own_prefill(
                        press, model, ids[:, :split] if question is not None else ids
                    )
                    prefill_s = 0.0  # its own prefill is inside the clock
                sync(ids.device)
                compress_s = time.perf_counter() - t0
                stored, stored_bytes = cache_tokens(cache)
                masked = masked_entries(model)
                same_hook = same_pipeline = None
                if question is not None:
                    t1 = time.perf_counter()
                    out, steps = greedy(model, cache, split, n, feed=question)
                    # the question's forward is part of the time to the first token
                    ttft = prefill_s + compress_s + (time.perf_counter() - t1) - sum(steps)
                    if check:
                        clear_masks(model)
                        torch.manual_seed(seed)
                        theirs = pipeline_answer(model, words, row, press, n)
                        same_pipeline = theirs == as_pipeline_answer(words, out, cfg.eos_token_id)
                else:
                    if check and replayed:
                        same_hook = hook_equal(model, press, ids, cache, seed)
                    out, steps = greedy(model, cache, ids.shape[1], n, first=first_logits)
                    ttft = prefill_s + compress_s
            except Exception as exc:  # one press failing must not lose the others' rows
                log(f"{point['press']} ({mode}, {row['prompt_id']}): {type(exc).__name__}: {exc}")
                mode_rows.append({**base, "error": f"{type(exc).__name__}: {exc}"})
                continue
            finally:
                clear_masks(model)
            first = first_divergence(out, dense)
            tpot = sum(steps) / len(steps) if steps else None
            mode_rows.append(
                {
                    **base,
                    "stored_fraction": stored / logical,
                    # what attention reads: a masking press keeps its masked entries stored
                    "masks": masked > 0,
                    "effective_stored_fraction": (stored * hk - masked) / (logical * hk),
                    "exact": first is None,
                    "exact_answer": first is None or first >= span,
                    "first_divergence": first,
                    "answer_correct": answer_correct(out, row, tokenizer),
                    # clocks only from a timed job (peers.timed: one alone on the machine)
                    "ttft_s": ttft if timed else None,
                    "tpot_s": tpot if timed else None,
                    "kv_bytes_stored": stored_bytes,
                    "kv_bytes_dense": dense_bytes,
                    "hook_equal": same_hook,
                    "pipeline_equal": same_pipeline,
                    "output_ids": out,
                    "dense_ids": dense,
                    "error": None,
                }
            )
        if timed:  # dense again after the presses: the ratios' baseline brackets them
            _, again, ttft2, tpot2 = dense_run(model, ids, split, mode, n)
            if again != dense:
                raise RuntimeError(f"{row['prompt_id']} ({mode}): two dense runs disagree")
            d_ttft, d_tpot = (dense_ttft + ttft2) / 2, (dense_tpot + tpot2) / 2
            for r in mode_rows:
                r.update(
                    dense_ttft_s=d_ttft,
                    dense_tpot_s=d_tpot,
                    ttft_ratio=_ratio(r.get("ttft_s"), d_ttft),
                    tpot_ratio=_ratio(r.get("tpot_s"), d_tpot),
                )
        rows.extend(mode_rows)
    return rows


def run(job: dict, log: Callable[[str], None] = print) -> pd.DataFrame:
    """The job's prompts through every planned press; one row per (press, point, mode, prompt)."""
    torch.manual_seed(int(job.get("seed", 0)))
    torch.set_num_threads(int(job.get("threads", 1)))
    model = load_model(job["model"])
    rows: list[dict] = []
    for item in job["prompts"]:
        prompts = pd.read_parquet(item["path"])
        if job.get("n_prompts"):
            prompts = prompts.head(int(job["n_prompts"]))
        plan = item["plan"]
        checks = int(item.get("check_pipeline", 0))
        t0 = time.perf_counter()
        records = prompts.to_dict("records")
        if job.get("timed", True) and records:  # warm-up: one untimed dense run of the first prompt
            first = torch.tensor([list(records[0]["input_ids"])], dtype=torch.long, device=model.device)
            dense_run(model, first, question_split(records[0]), QUESTION_AWARE, int(job["max_new_tokens"]))
        for i, row in enumerate(records):
            check = i < checks and row.get("renderer") == "synthetic"
            rows.extend(run_prompt(model, row, plan, job, log, check, turn=i))
        log(
            f"{item['path']}: {len(prompts)} prompts × {len(plan)} points in {time.perf_counter() - t0:.1f} s"
        )
    return pd.DataFrame(rows)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    return {k: md.version(k) for k in ("kvpress", "transformers", "torch", "pandas")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", required=True, help="the job (JSON) bcr.peers.plan wrote")
    ap.add_argument("--out", required=True, help="rows (Parquet); versions go to OUT.versions.json")
    args = ap.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    try:
        df = run(job, log=lambda s: print(s, flush=True))
    except Exception:
        traceback.print_exc()
        return 1
    io.write_parquet(df, args.out)
    io.write_text(json.dumps(versions()), args.out + ".versions.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
