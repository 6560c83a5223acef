"""One setting over a prompt set: dense and tiered greedy runs interleaved in one process.

Per prompt, after a warm-up of every path (first prompt only), each repeat runs dense and each
tiered decode path once, on fresh caches, the order rotating from repeat to repeat (dense first,
then a tiered path first: the shared loop of :mod:`bcr.measure`).  Rows: one ``dense`` row (the stock ``DynamicCache`` reference)
and one row per tiered decode path.  Tokens must agree across repeats (determinism gate) and the
in-process dense tokens must equal the dense baseline file when one is given: otherwise nothing
downstream could be trusted, so the run fails loudly.

Definitions (DESIGN.md, "Tiered compression"):

* ``exact`` — greedy tokens identical to dense over ``max_new_tokens`` (EOS stops both);
* ``first_divergence`` — index of the first differing token (null when exact);
* ``max_logit_diff`` — max |logit_tiered - logit_dense| over the steps both runs took from the same
  prefix (every step when exact; up to and including the diverging step otherwise);
* ``logical_tokens`` / ``stored_tokens`` — summed over layers, for the prompt (after compression,
  before decode); ``compression`` = logical / stored, ``stored_fraction`` = stored / logical;
* ``ttft_ratio`` / ``tpot_ratio`` — median tiered / median dense over the interleaved repeats;
* ``kv_bytes_stored`` — cache bytes after the last decode step;
* ``kv_bytes_peak`` — max of the prefill high-water mark (all dense prefill K/V plus the layer being
  compressed) and the decode one (stored bytes plus the largest transient a layer's decode step
  builds: densify's concatenated views, GQA copies and bias row, or a dense layer's ``torch.cat``);
* ``peak_mem_bytes`` — CUDA ``max_memory_allocated`` (max of prefill and decode, reset between them),
  null on CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import torch
from transformers import DynamicCache

from bcr.contracts import DENSE_PATH, QUERY_MODES, TIERED_COLUMNS
from bcr.generation import GreedyResult, cache_nbytes, greedy
from bcr.measure import DeterminismError, check_repeats, interleaved, max_present, median_present
from bcr.models import LoadedModel
from bcr.prompts import answer_correct, answer_span, question_split
from bcr.tiered.attention import tiered_attention
from bcr.tiered.cache import TieredCache
from bcr.tiered.manifest import LayerManifest, pages_of_span
from bcr.tiered.settings import TieredSetting

QUESTION_AWARE, QUESTION_AGNOSTIC = QUERY_MODES

DIAGNOSTIC_COLUMNS = [
    "query_mode",
    "prompt_tokens",
    "n_generated",
    "output_ids",
    "band_layers",
    "compress_s",
    "kv_bytes_peak_prefill",
    "peak_prefill_bytes",
    "peak_decode_bytes",
    "needle_pages",
    "needle_phantom_layers",
    "lost",
    "manifest",
    "setting_json",
    "repeats",
]
COLUMNS = TIERED_COLUMNS + DIAGNOSTIC_COLUMNS
INT_COLUMNS = [
    "first_divergence",
    "peak_mem_bytes",
    "peak_prefill_bytes",
    "peak_decode_bytes",
]


@dataclass
class TieredRun:
    result: GreedyResult
    stored_bytes: int
    peak_bytes_prefill: int
    peak_bytes_decode: int
    logical_tokens: int
    stored_tokens: int
    compress_s: float | None
    manifests: list[LayerManifest]

    @classmethod
    def of(cls, result: GreedyResult, cache: TieredCache) -> TieredRun:
        """A tiered run's accounting, read off its cache after decoding."""
        stored = cache.nbytes()
        return cls(
            result,
            stored,
            cache.prefill_peak_bytes,
            stored + cache.max_transient_bytes(),
            cache.prompt_logical_tokens,
            cache.prompt_stored_tokens,
            cache.compress_s,
            cache.manifests(),
        )


def _gen_kwargs(loaded: LoadedModel, generation: dict) -> dict:
    return dict(
        max_new_tokens=generation["max_new_tokens"],
        eos_token_ids=loaded.eos_token_ids,
        stop_at_eos=generation.get("stop_at_eos", True),
        keep_logits=True,
    )


def run_dense(loaded: LoadedModel, ids: torch.Tensor, kw: dict, split: int | None = None) -> TieredRun:
    cache = DynamicCache(config=loaded.model.config)
    res, cache = greedy(loaded.model, ids, cache=cache, split=split, **kw)
    stored = cache_nbytes(cache)
    n = ids.shape[1]
    n_layers = len(cache.layers)
    grow = max(layer.keys.numel() * layer.keys.element_size() for layer in cache.layers)
    prefill = stored * n // cache.get_seq_length()  # all layers at the prompt length
    return TieredRun(res, stored, prefill, stored + grow, n * n_layers, n * n_layers, None, [])


def run_tiered(
    loaded: LoadedModel,
    ids: torch.Tensor,
    setting: TieredSetting,
    path: str,
    kw: dict,
    forced_phantom: dict[int, Iterable[int]] | None = None,
    query_mode: str = QUESTION_AWARE,
    split: int | None = None,
) -> TieredRun:
    """One tiered run: compress after the whole prompt (question-aware) or after the context, before
    the question is fed through the compressed cache (question-agnostic; needs ``split``)."""
    cache = TieredCache(loaded.model.config, setting, path, forced_phantom)
    if query_mode == QUESTION_AWARE:
        hooks = {"after_prefill": cache.compress}
    elif query_mode == QUESTION_AGNOSTIC:
        if split is None:
            raise ValueError("the question-agnostic mode needs the prompt's question_start")
        hooks = {"after_context": cache.compress}
    else:
        raise ValueError(f"unknown query mode {query_mode!r} (known: {', '.join(QUERY_MODES)})")
    with tiered_attention(loaded.model):
        res, cache = greedy(loaded.model, ids, cache=cache, split=split, **hooks, **kw)
    return TieredRun.of(res, cache)


def compare(dense: GreedyResult, tiered: GreedyResult) -> tuple[bool, int | None, float]:
    """(exact, first_divergence, max_logit_diff) as defined in the module docstring."""
    d, t = dense.tokens, tiered.tokens
    first = next((i for i, (a, b) in enumerate(zip(d, t, strict=False)) if a != b), None)
    if first is None and len(d) != len(t):
        first = min(len(d), len(t))
    steps = min(len(dense.step_logits), len(tiered.step_logits))
    upto = steps if first is None else min(steps, first + 1)
    diff = max(
        (float((dense.step_logits[i] - tiered.step_logits[i]).abs().max()) for i in range(upto)), default=0.0
    )
    return first is None, first, diff


def margin_at(result: GreedyResult, step: int | None) -> float | None:
    """The reference's top-1 minus top-2 logit at ``step``: a small margin is a flipped near-tie, a
    large one a real loss (e.g. of the retrieved value)."""
    if step is None or step >= len(result.step_logits):
        return None
    top = torch.topk(result.step_logits[step], 2).values
    return float(top[0] - top[1])


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _check_same(runs: list[TieredRun], what: str, prompt_id: str) -> None:
    check_repeats([r.result.tokens for r in runs], what, prompt_id)
    check_repeats([[m.to_json() for m in r.manifests] for r in runs], what, prompt_id, "page manifests")


def lost_pages(manifests: list[LayerManifest], needle: list[int]) -> tuple[list[int], str]:
    """Which compressed layers summarised a needle page, and a one-line account of what was lost."""
    layers = [m.layer for m in manifests if any(p in m.phantom for p in needle)]
    if layers:
        where = {m.layer: [p for p in needle if p in m.phantom] for m in manifests if m.layer in layers}
        return layers, "needle page(s) phantom: " + "; ".join(
            f"layer {k} pages {v}" for k, v in where.items()
        )
    tops = [
        f"layer {m.layer} page {j['top_phantom_page']} (share {j['top_phantom_share']})"
        for m in manifests
        if (j := m.to_json())["top_phantom_page"] is not None
    ]
    kept = "needle pages exact in every compressed layer" if needle else "needle position unknown"
    return layers, f"{kept}; most-attended phantom pages: " + ("; ".join(tops) or "none")


def _row(
    setting: TieredSetting,
    prompt: dict,
    path: str,
    runs: list[TieredRun],
    dense: list[TieredRun],
    tok,
    query_mode: str,
):
    r0 = runs[0]
    if path == DENSE_PATH:
        exact, first, diff = True, None, 0.0
    else:
        exact, first, diff = compare(dense[0].result, r0.result)
    reference = dense[0].result.tokens
    span = answer_span(reference, prompt, tok)
    ttft = median_present([r.result.ttft_s for r in runs])
    tpot = median_present([r.result.tpot_s for r in runs])
    peak_pre = max_present([r.result.peak_prefill_bytes for r in runs])
    peak_dec = max_present([r.result.peak_decode_bytes for r in runs])
    needle = pages_of_span(int(prompt["needle_start"]), int(prompt["needle_end"]), setting.page_size)
    if int(prompt["needle_start"]) < 0:
        needle = []
    needle_layers, account = lost_pages(r0.manifests, needle)
    return {
        "setting": setting.name,
        "context": int(prompt["context"]),
        "prompt_id": prompt["prompt_id"],
        "decode_path": path,
        "exact": exact,
        "first_divergence": first,
        "max_logit_diff": diff,
        "answer_correct": answer_correct(r0.result.tokens, prompt, tok),
        "logical_tokens": r0.logical_tokens,
        "stored_tokens": r0.stored_tokens,
        "compression": r0.logical_tokens / r0.stored_tokens,
        "stored_fraction": r0.stored_tokens / r0.logical_tokens,
        "ttft_s": ttft,
        "tpot_s": tpot,
        "ttft_ratio": _ratio(ttft, median_present([r.result.ttft_s for r in dense])),
        "tpot_ratio": _ratio(tpot, median_present([r.result.tpot_s for r in dense])),
        "kv_bytes_stored": r0.stored_bytes,
        "kv_bytes_peak": max(r0.peak_bytes_prefill, r0.peak_bytes_decode),
        "peak_mem_bytes": max_present([peak_pre, peak_dec]),
        "prompt_tokens": len(prompt["input_ids"]),
        "n_generated": len(r0.result.tokens),
        "output_ids": list(r0.result.tokens),
        "band_layers": [m.layer for m in r0.manifests] if path != DENSE_PATH else [],
        "compress_s": median_present([r.compress_s for r in runs]),
        "kv_bytes_peak_prefill": r0.peak_bytes_prefill,
        "kv_bytes_peak_decode": r0.peak_bytes_decode,
        "peak_prefill_bytes": peak_pre,
        "peak_decode_bytes": peak_dec,
        "needle_pages": needle,
        "needle_phantom_layers": needle_layers if path != DENSE_PATH else [],
        "lost": None if exact else account,
        "manifest": json.dumps([m.to_json() for m in r0.manifests]) if path != DENSE_PATH else "[]",
        "setting_json": json.dumps(setting.as_dict(), sort_keys=True),
        "query_mode": query_mode,
        "exact_answer": first is None or first >= span,
        "divergence_margin": margin_at(dense[0].result, first),
        # the reference continues after its answer with one token repeated (EOS, say): a flat tail
        "degenerate": len(set(reference[span:])) <= 1,
        "repeats": len(runs),
    }


def measure_setting(
    loaded: LoadedModel,
    prompts: pd.DataFrame,
    setting: TieredSetting,
    decode_paths: list[str],
    generation: dict,
    device: torch.device,
    dense_reference: dict[str, list[int]] | None = None,
    forced_phantom: dict[str, dict[int, list[int]]] | None = None,
    progress=None,
    query_mode: str = QUESTION_AWARE,
) -> pd.DataFrame:
    """Rows for every prompt and path (``dense`` first); see the module docstring for the columns.

    ``forced_phantom`` maps prompt_id -> {layer: pages} that must be summarised (tests, diagnosis).
    """
    kw = _gen_kwargs(loaded, generation)
    rows = []
    for i, prompt in enumerate(prompts.to_dict("records")):
        ids = torch.tensor([list(prompt["input_ids"])], device=device)
        forced = (forced_phantom or {}).get(prompt["prompt_id"])
        split = question_split(prompt)  # dense and tiered prefill the same chunks
        arms = {DENSE_PATH: lambda ids=ids, split=split: run_dense(loaded, ids, kw, split)}
        for path in decode_paths:
            arms[path] = lambda ids=ids, path=path, forced=forced, split=split: run_tiered(
                loaded, ids, setting, path, kw, forced, query_mode, split
            )
        runs = interleaved(arms, generation["repeats"], generation["warmup"] if i == 0 else 0)
        dense = runs[DENSE_PATH]
        tiered = {path: runs[path] for path in decode_paths}
        pid = prompt["prompt_id"]
        _check_same(dense, "dense", pid)
        for path in decode_paths:
            _check_same(tiered[path], f"tiered ({setting.name}, {path})", pid)
        if dense_reference is not None:
            ref = dense_reference.get(pid)
            if ref is None:
                raise DeterminismError(f"prompt {pid} is missing from the dense baseline file")
            if list(ref) != dense[0].result.tokens:
                raise DeterminismError(
                    f"prompt {pid}: in-process dense tokens {dense[0].result.tokens} differ from the dense "
                    f"baseline file {list(ref)}; the runs are not comparable"
                )
        rows.append(_row(setting, prompt, DENSE_PATH, dense, dense, loaded.tokenizer, query_mode))
        for path in decode_paths:
            rows.append(_row(setting, prompt, path, tiered[path], dense, loaded.tokenizer, query_mode))
        if progress is not None:
            progress(rows[-1])
    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in INT_COLUMNS:
        df[c] = df[c].astype("Int64")
    return df


def _shared_run(result: GreedyResult, cache) -> TieredRun:
    """A run from a shared prefill as the row builder takes it (untimed; the KV accounting is its own)."""
    if isinstance(cache, TieredCache):
        return TieredRun.of(result, cache)
    stored = cache_nbytes(cache)
    n, layers = cache.get_seq_length(), len(cache.layers)
    return TieredRun(result, stored, stored, stored, n * layers, n * layers, None, [])


def measure_controls(
    loaded: LoadedModel,
    prompts: pd.DataFrame,
    settings: list[TieredSetting],
    kinds: list[str],
    generation: dict,
    device: torch.device,
    dense_reference: dict[str, list[int]] | None = None,
    seed: int = 0,
    progress=None,
) -> pd.DataFrame:
    """Negative controls matched to each of ``settings`` (question-aware, like the sweep): one row per
    (control, prompt), plus the matched setting's own row from the same shared prefill, for comparison.

    Every run starts from one prefill per prompt (:mod:`bcr.tiered.shared`): controls are about
    exactness, not time, so they are untimed; the dense reference from the shared prefill must equal
    the dense baseline file, which is the cross-process determinism gate.
    """
    from bcr.tiered import controls, shared

    kw = _gen_kwargs(loaded, generation)
    rows = []
    for prompt in prompts.to_dict("records"):
        ids = torch.tensor([list(prompt["input_ids"])], device=device)
        split = question_split(prompt)
        if split is None:
            raise ValueError(f"prompt {prompt['prompt_id']}: controls need its question_start")
        n = ids.shape[1]  # question-aware: the whole prompt is compressed
        specs = [(s, None, s.name) for s in settings]
        specs += [(controls.matched(s, k, n, seed), k, s.name) for s in settings for k in kinds]
        w = max(s.obs_window for s, _, _ in specs)
        ctx, full = shared.capture(loaded, ids, split, w, settings[0].page_size)
        ref, ref_cache = shared.run_dense_from(loaded, full, kw)
        pid = prompt["prompt_id"]
        if dense_reference is not None and list(dense_reference.get(pid, [])) != ref.tokens:
            raise DeterminismError(
                f"prompt {pid}: dense tokens from the shared prefill {ref.tokens} differ from the dense "
                f"baseline file {dense_reference.get(pid)}"
            )
        dense = [_shared_run(ref, ref_cache)]
        for spec, kind, matched_to in specs:
            result, cache = shared.run_tiered_from(loaded, ctx, full, ids, spec, QUESTION_AWARE, kw)
            row = _row(
                spec, prompt, "densify", [_shared_run(result, cache)], dense, loaded.tokenizer, QUESTION_AWARE
            )
            rows.append({**row, "control": kind, "matched_to": matched_to})
            if progress is not None:
                progress(rows[-1])
    df = pd.DataFrame(rows, columns=[*COLUMNS, "control", "matched_to"])
    for c in INT_COLUMNS:
        df[c] = df[c].astype("Int64")
    return df
