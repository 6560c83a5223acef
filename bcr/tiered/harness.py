"""Tiered settings over a prompt set: exactness from one shared prefill, latency from fresh runs.

:func:`measure` is the one entry point (the sweep, the promotion runs and the controls call it).
Per prompt, the prompt is prefilled once -- context, then question -- and every (query mode, setting,
decode path) compresses a copy of that prefill (:mod:`bcr.tiered.shared`), beside the dense reference
decoded from the same prefill: exactness and the KV accounting come from these runs, on every prompt.
The first ``timed_prompts`` prompts are also timed: fresh dense and tiered runs, in rounds whose order
rotates from round to round and from prompt to prompt (the shared loop of :mod:`bcr.measure`); every
fresh run must reproduce the shared run's tokens and page manifests (the determinism gate), and the
dense tokens must equal the dense baseline file when one is given, or the run fails loudly.

Rows: per prompt and setting, one ``dense`` row (the stock ``DynamicCache`` reference) and one row per
tiered decode path; one frame per query mode.  Definitions (DESIGN.md, "Tiered compression"):

* ``exact`` -- greedy tokens identical to dense over ``max_new_tokens`` (the whole trajectory);
  ``exact_answer`` -- identical over the reference's answer span (the primary measure);
* ``first_divergence`` -- index of the first differing token (null when exact), with
  ``divergence_margin``, the reference's top-1 minus top-2 logit there;
* ``max_logit_diff`` -- max |logit_tiered - logit_dense| over the steps both runs took from the same
  prefix (every step when exact; up to and including the diverging step otherwise);
* ``logical_tokens`` / ``stored_tokens`` -- summed over layers, for the prompt (after compression,
  before decode); ``compression`` = logical / stored, ``stored_fraction`` = stored / logical;
* ``ttft_ratio`` / ``tpot_ratio`` -- median tiered / median dense over the timed rounds (null on an
  untimed prompt; ``repeats`` says how many rounds a row's latency has); ``*_ratio_static`` the
  same against transformers' preallocated ``StaticCache``, timed in the same rounds (the dense row's
  is DynamicCache / StaticCache);
* ``kv_bytes_stored`` -- cache bytes after the last decode step;
* ``kv_bytes_peak`` -- max of the prefill high-water mark (``kv_bytes_peak_prefill``: with the
  band compressed layer by layer during the prefill, as the fresh runs do; every fresh run must
  reach the very mark the shared run computes) and the decode one, ``kv_bytes_peak_decode``
  (stored bytes plus the largest transient a layer's decode step builds: densify's concatenated
  views, GQA copies and bias row, or a dense layer's ``torch.cat``; a ``StaticCache`` builds none);
* ``peak_mem_bytes`` -- CUDA ``max_memory_allocated`` over the timed runs, null on CPU.

The first ``decomposition_prompts`` timed prompts also get one instrumented run per arm in the same
rounds (:mod:`bcr.phases`): seconds per phase, the instrumented total, and the arm's uninstrumented
time beside it, so the timers' own cost is visible.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd
import torch
from transformers import DynamicCache, StaticCache

from bcr import phases
from bcr.contracts import (
    DECOMPOSITION_COLUMNS,
    DENSE_PATH,
    DENSE_STATIC_PATH,
    QUERY_MODES,
    TIERED_COLUMNS,
    WORKLOAD,
)
from bcr.generation import GreedyResult, cache_nbytes, greedy
from bcr.measure import DeterminismError, check_repeats, interleaved, max_present, median_present
from bcr.models import LoadedModel
from bcr.prompts import answer_correct, answer_span, question_split
from bcr.tiered.attention import tiered_attention
from bcr.tiered.cache import TieredCache
from bcr.tiered.manifest import LayerManifest, pages_of_span
from bcr.tiered.settings import TieredSetting
from bcr.tiered.shared import dense_capacity, reserve_tokens

QUESTION_AWARE, QUESTION_AGNOSTIC = QUERY_MODES

DIAGNOSTIC_COLUMNS = [
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
    "static_exact",  # dense rows: the StaticCache arm's tokens equal DynamicCache's (null: untimed)
]
COLUMNS = TIERED_COLUMNS + DIAGNOSTIC_COLUMNS
FLOAT_COLUMNS = [
    "ttft_s",
    "tpot_s",
    "ttft_ratio",
    "tpot_ratio",
    "ttft_ratio_static",
    "tpot_ratio_static",
    "compress_s",
    "divergence_margin",
]
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


def run_dense(
    loaded: LoadedModel, ids: torch.Tensor, kw: dict, split: int | None = None, static: bool = False
) -> TieredRun:
    """The stock ``DynamicCache`` (concatenating every step), or a ``StaticCache`` preallocated for
    the prompt and ``max_new_tokens`` (written in place, attended over its whole length with a mask)."""
    config = loaded.model.config
    if static:
        cache = StaticCache(config=config, max_cache_len=ids.shape[1] + kw["max_new_tokens"])
    else:
        cache = DynamicCache(config=config)
    res, cache = greedy(loaded.model, ids, cache=cache, split=split, **kw)
    return _dense_account(res, cache, ids.shape[1])


def run_tiered(
    loaded: LoadedModel,
    ids: torch.Tensor,
    setting: TieredSetting,
    path: str,
    kw: dict,
    forced_phantom: dict[int, Iterable[int]] | None = None,
    query_mode: str = QUESTION_AWARE,
    split: int | None = None,
    layerwise: bool = True,
    forced_summary: dict[int, Iterable[int]] | None = None,
) -> TieredRun:
    """One fresh tiered run: the band compressed layer by layer during the prefill, once each layer
    holds the whole prompt (question-aware) or the context, before the question is fed through the
    compressed cache (question-agnostic; needs ``split``).  ``layerwise=False`` compresses after the
    forward instead (the shared runs' order; tests check both give the same run).
    ``forced_summary``: {layer: token positions} never kept as exceptions (tests, diagnosis)."""
    if query_mode not in QUERY_MODES:
        raise ValueError(f"unknown query mode {query_mode!r} (known: {', '.join(QUERY_MODES)})")
    n = ids.shape[1]
    reserve = reserve_tokens(query_mode, n, split, kw["max_new_tokens"])
    capacity = dense_capacity(n, kw["max_new_tokens"])
    cache = TieredCache(
        loaded.model.config, setting, path, forced_phantom, reserve, capacity, forced_summary=forced_summary
    )
    aware = query_mode == QUESTION_AWARE
    hooks = {}
    if layerwise:
        cache.compress_during_prefill(n if aware else split)
    elif aware:
        hooks = {"after_prefill": lambda c: cache.compress(prior_tokens=split or 0)}
    else:
        hooks = {"after_context": cache.compress}
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


def lost_pages(
    manifests: list[LayerManifest], needle: list[int], values: list[int] = ()
) -> tuple[list[int], str]:
    """Which compressed layers summarised a needle page, and a one-line account of what was lost
    (with ``values``, the answer's token positions: how many of those in phantom pages each such
    layer kept as exceptions, in any KV head)."""
    layers = [m.layer for m in manifests if any(p in m.phantom for p in needle)]
    if layers:
        parts = []
        for m in manifests:
            if m.layer not in layers:
                continue
            text = f"layer {m.layer} pages {[p for p in needle if p in m.phantom]}"
            inside = [t for t in values if t // m.page_size in m.phantom]
            if m.exceptions and inside:
                held = set().union(*map(set, m.exceptions))
                text += f" (value tokens kept as exceptions: {sum(t in held for t in inside)}/{len(inside)})"
            parts.append(text)
        return layers, "needle page(s) phantom: " + "; ".join(parts)
    tops = [
        f"layer {m.layer} page {j['top_phantom_page']} (share {j['top_phantom_share']})"
        for m in manifests
        if (j := m.to_json())["top_phantom_page"] is not None
    ]
    kept = "needle pages exact in every compressed layer" if needle else "needle position unknown"
    return layers, f"{kept}; most-attended phantom pages: " + ("; ".join(tops) or "none")


def answer_pages(prompt: dict, page_size: int) -> list[int]:
    """The pages holding the answer: the needle's span and, where the family scatters it, every
    value token's page (diagnostics only: the compressor never reads this)."""
    start, end = int(prompt["needle_start"]), int(prompt["needle_end"])
    pages = set(pages_of_span(start, end, page_size)) if start >= 0 else set()
    positions = prompt.get("value_positions")
    if positions is not None and not (isinstance(positions, float) and pd.isna(positions)):
        pages |= {int(p) // page_size for p in positions if int(p) >= 0}
    return sorted(pages)


def _row(
    setting: TieredSetting,
    prompt: dict,
    path: str,
    run: TieredRun,
    dense: TieredRun,
    tok,
    query_mode: str,
    timed: list[TieredRun] | None = None,
    dense_timed: list[TieredRun] | None = None,
    static_timed: list[TieredRun] | None = None,
):
    """One result row: exactness and KV accounting from ``run`` against ``dense``; latency and CUDA
    peaks from the ``timed`` repeats against ``dense_timed`` and ``static_timed`` (None: untimed)."""
    timed = timed or []
    dense_timed = dense_timed or []
    static_timed = static_timed or []
    if path == DENSE_PATH:
        exact, first, diff = True, None, 0.0
    else:
        exact, first, diff = compare(dense.result, run.result)
    reference = dense.result.tokens
    span = answer_span(reference, prompt, tok)
    ttft = median_present([r.result.ttft_s for r in timed])
    tpot = median_present([r.result.tpot_s for r in timed])
    peak_pre = max_present([r.result.peak_prefill_bytes for r in timed])
    peak_dec = max_present([r.result.peak_decode_bytes for r in timed])
    needle = answer_pages(prompt, setting.page_size)
    positions = prompt.get("value_positions")
    values = (
        []
        if positions is None or isinstance(positions, float)
        else [int(p) for p in positions if int(p) >= 0]
    )
    needle_layers, account = lost_pages(run.manifests, needle, values)
    return {
        "setting": setting.name,
        WORKLOAD: prompt[WORKLOAD],
        "query_mode": query_mode,
        "context": int(prompt["context"]),
        "prompt_id": prompt["prompt_id"],
        "decode_path": path,
        "exact": exact,
        "first_divergence": first,
        "max_logit_diff": diff,
        "answer_correct": answer_correct(run.result.tokens, prompt, tok),
        "logical_tokens": run.logical_tokens,
        "stored_tokens": run.stored_tokens,
        "compression": run.logical_tokens / run.stored_tokens,
        "stored_fraction": run.stored_tokens / run.logical_tokens,
        "ttft_s": ttft,
        "tpot_s": tpot,
        "ttft_ratio": _ratio(ttft, median_present([r.result.ttft_s for r in dense_timed])),
        "tpot_ratio": _ratio(tpot, median_present([r.result.tpot_s for r in dense_timed])),
        "ttft_ratio_static": _ratio(ttft, median_present([r.result.ttft_s for r in static_timed])),
        "tpot_ratio_static": _ratio(tpot, median_present([r.result.tpot_s for r in static_timed])),
        "kv_bytes_stored": run.stored_bytes,
        "kv_bytes_peak": max(run.peak_bytes_prefill, run.peak_bytes_decode),
        "peak_mem_bytes": max_present([peak_pre, peak_dec]),
        "prompt_tokens": len(prompt["input_ids"]),
        "n_generated": len(run.result.tokens),
        "output_ids": list(run.result.tokens),
        "band_layers": [m.layer for m in run.manifests] if path != DENSE_PATH else [],
        "compress_s": median_present([r.compress_s for r in timed]),
        "kv_bytes_peak_prefill": run.peak_bytes_prefill,
        "kv_bytes_peak_decode": run.peak_bytes_decode,
        "peak_prefill_bytes": peak_pre,
        "peak_decode_bytes": peak_dec,
        "needle_pages": needle,
        "needle_phantom_layers": needle_layers if path != DENSE_PATH else [],
        "lost": None if exact else account,
        "manifest": json.dumps([m.to_json() for m in run.manifests]) if path != DENSE_PATH else "[]",
        "setting_json": json.dumps(setting.as_dict(), sort_keys=True),
        "exact_answer": first is None or first >= span,
        "divergence_margin": margin_at(dense.result, first),
        # the reference continues after its answer with one token repeated (EOS, say): a flat tail
        "degenerate": len(set(reference[span:])) <= 1,
        "repeats": len(timed),
        "static_exact": (
            static_timed[0].result.tokens == reference if path == DENSE_PATH and static_timed else None
        ),
    }


def _frame(rows: list[dict], extra: list[str] = ()) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=[*COLUMNS, *extra])
    for c in INT_COLUMNS:
        df[c] = df[c].astype("Int64")
    for c in FLOAT_COLUMNS:
        df[c] = df[c].astype("float64")
    df["static_exact"] = df["static_exact"].astype("boolean")
    return df


def _dense_account(result: GreedyResult, cache: DynamicCache | StaticCache, n_prompt: int) -> TieredRun:
    """A dense run's KV accounting.  ``DynamicCache``: every layer at the prompt length after
    prefill; while decoding, the stored bytes plus the largest layer's ``torch.cat`` growth.
    ``StaticCache``: its preallocated buffers from the start, written in place."""
    stored = cache_nbytes(cache)
    n_layers = len(cache.layers)
    if isinstance(cache, StaticCache):
        prefill, decode = stored, stored
    else:
        grow = max(layer.keys.numel() * layer.keys.element_size() for layer in cache.layers)
        prefill, decode = stored * n_prompt // int(cache.get_seq_length()), stored + grow
    return TieredRun(result, stored, prefill, decode, n_prompt * n_layers, n_prompt * n_layers, None, [])


def _check_dense_reference(pid: str, tokens: list[int], reference: dict[str, list[int]] | None) -> None:
    if reference is None:
        return
    ref = reference.get(pid)
    if ref is None:
        raise DeterminismError(f"prompt {pid} is missing from the dense baseline file")
    if list(ref) != tokens:
        raise DeterminismError(
            f"prompt {pid}: in-process dense tokens {tokens} differ from the dense baseline file "
            f"{list(ref)}; the runs are not comparable"
        )


def _check_fresh(fresh: list[TieredRun], shared_run: TieredRun, what: str, pid: str) -> None:
    """Fresh runs (compressing layer by layer during their prefill) must compute what the shared-
    prefill run computed: tokens, page manifests, and the prefill KV high-water mark it derived."""
    _check_same(fresh, what, pid)
    want = [m.to_json() for m in shared_run.manifests]
    if (
        fresh[0].result.tokens != shared_run.result.tokens
        or [m.to_json() for m in fresh[0].manifests] != want
    ):
        raise DeterminismError(
            f"prompt {pid}: {what}: a fresh run {fresh[0].result.tokens} differs from the run from the "
            f"shared prefill {shared_run.result.tokens}"
        )
    if fresh[0].peak_bytes_prefill != shared_run.peak_bytes_prefill:
        raise DeterminismError(
            f"prompt {pid}: {what}: a fresh run's prefill KV high-water {fresh[0].peak_bytes_prefill} B "
            f"differs from the {shared_run.peak_bytes_prefill} B the shared run computed"
        )


def instrumented(loaded: LoadedModel, device: torch.device, run):
    """``run()`` with a phase clock current and the tiered attention implementation (which times the
    decode attention of dense layers too): (the run, its clock)."""
    clock = phases.PhaseClock(device)
    with phases.timing(clock), tiered_attention(loaded.model):
        out = run()
    return out, clock


def decomposition_rows(
    prompt: dict, mode: str, setting: str, path: str, runs: list, reference: list[TieredRun]
) -> list[dict]:
    """Per phase, the mean over the instrumented runs (so the phases still sum to ``total_s``, their
    mean total); ``reference_s``: the arm's uninstrumented TTFT + decode time (medians), same prompt."""
    steps = len(runs[0][0].result.tokens) - 1
    ttft = median_present([r.result.ttft_s for r in reference])
    tpot = median_present([r.result.tpot_s for r in reference]) or 0.0
    base = {
        "setting": setting,
        WORKLOAD: prompt[WORKLOAD],
        "query_mode": mode,
        "context": int(prompt["context"]),
        "prompt_id": prompt["prompt_id"],
        "decode_path": path,
        "total_s": statistics.fmean(c.total for _, c in runs),
        "reference_s": None if ttft is None else ttft + tpot * steps,
        "steps": steps,
    }
    return [
        {**base, "phase": name, "seconds": statistics.fmean(c.seconds[name] for _, c in runs)}
        for name in phases.PHASES
    ]


def decomposition_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=DECOMPOSITION_COLUMNS)
    df["context"] = df["context"].astype("int64")
    df["steps"] = df["steps"].astype("int64")
    for c in ("seconds", "total_s", "reference_s"):
        df[c] = df[c].astype("float64")
    return df


def measure(
    loaded: LoadedModel,
    prompts: pd.DataFrame,
    settings: list[TieredSetting],
    decode_paths: list[str],
    generation: dict,
    device: torch.device,
    modes: Iterable[str] = (QUESTION_AWARE,),
    timed_prompts: int | None = None,
    dense_reference: dict[str, list[int]] | None = None,
    forced_phantom: dict[str, dict[int, list[int]]] | None = None,
    progress=None,
    decomposition_prompts: int = 0,
    decomposition: list[dict] | None = None,
    timed_settings: Callable[[dict[str, pd.DataFrame]], Iterable[str]] | None = None,
) -> dict[str, pd.DataFrame]:
    """Rows for every (mode, prompt, setting, path), a ``dense`` row first per prompt; one frame per mode.

    Exactness on every prompt from one prefill per prompt (:mod:`bcr.tiered.shared`: captured once,
    compressed per setting and mode).  Then the first ``timed_prompts`` prompts (None: all; 0: none)
    are timed: fresh dense (``DynamicCache`` and ``StaticCache``) and tiered runs,
    ``generation["repeats"]`` rounds in rotating order (the rotation continuing from prompt to
    prompt), each tiered one of which must reproduce the shared run's tokens, page manifests and
    prefill high-water mark, and whose medians fill the latency columns.  ``timed_settings``, given
    the exactness frames, names the settings whose tiered arms are timed (None: every setting; the
    promotion runs time only the setting the claims are about).  The first ``decomposition_prompts``
    timed prompts add one instrumented run per arm to those rounds, whose per-phase rows are
    appended to ``decomposition``.  The dense tokens must equal the dense baseline file when one is
    given.  ``forced_phantom`` maps prompt_id -> {layer: pages} that must be summarised (tests,
    diagnosis).
    """
    from bcr.tiered import shared

    modes = list(modes)
    unknown = [m for m in modes if m not in QUERY_MODES]
    if unknown:
        raise ValueError(f"unknown query mode(s) {unknown} (known: {', '.join(QUERY_MODES)})")
    if decomposition_prompts and decomposition is None:
        raise ValueError("decomposition_prompts needs a decomposition list to append its rows to")
    kw = _gen_kwargs(loaded, generation)
    kw_t = dict(kw, keep_logits=False)  # timed runs: tokens and clocks (the shared runs compare logits)
    w = max((s.obs_window for s in settings), default=1)
    page = settings[0].page_size if settings else 16

    def rows_of(shot: _Shared, timed: dict) -> dict[str, list[dict]]:
        """A prompt's rows: a setting's tiered rows carry latency when its arms were timed."""
        dense_timed = timed.get(DENSE_PATH)
        static_timed = timed.get(DENSE_STATIC_PATH)
        out: dict[str, list[dict]] = {m: [] for m in modes}
        for mode in modes:
            for s in settings:  # each setting's rows start with the dense reference (as one file each did)
                for path in (DENSE_PATH, *decode_paths):
                    run = shot.dense if path == DENSE_PATH else shot.runs[mode, s.name, path]
                    own = dense_timed if path == DENSE_PATH else timed.get((mode, s.name, path))
                    out[mode].append(
                        _row(s, shot.prompt, path, run, shot.dense, loaded.tokenizer, mode,
                             own, dense_timed, static_timed)
                    )  # fmt: skip
        return out

    # Pass 1: exactness on every prompt from its shared prefill.
    shots: list[_Shared] = []
    per_prompt: list[dict[str, list[dict]]] = []
    for i, prompt in enumerate(prompts.to_dict("records")):
        pid = prompt["prompt_id"]
        ids = torch.tensor([list(prompt["input_ids"])], device=device)
        split = question_split(prompt)
        if split is None:
            raise ValueError(f"prompt {pid}: the shared prefill needs its question_start")
        forced = (forced_phantom or {}).get(pid)
        ctx, full = shared.capture(loaded, ids, split, w, page)
        ref, ref_cache = shared.run_dense_from(loaded, full, kw)
        ref.step_logits = [x.cpu() for x in ref.step_logits]  # [V] per step: off the accelerator
        _check_dense_reference(pid, ref.tokens, dense_reference)
        runs = {}
        for mode in modes:
            for s in settings:
                for path in decode_paths:
                    result, cache = shared.run_tiered_from(loaded, ctx, full, ids, s, mode, kw, path, forced)
                    result.step_logits = [x.cpu() for x in result.step_logits]
                    runs[mode, s.name, path] = TieredRun.of(result, cache)
        dense = _dense_account(ref, ref_cache, ids.shape[1])
        del ctx, full, ref_cache  # the snapshots' K/V go before the next prompt's (or a timed run's)
        shot = _Shared(prompt, ids, split, forced, ref.tokens, dense, runs)
        per_prompt.append(rows_of(shot, {}))
        if progress is not None:
            for mode in modes:
                for r in per_prompt[-1][mode]:
                    if r["decode_path"] != DENSE_PATH:
                        progress(r)
        if timed_prompts is None or i < timed_prompts:
            shots.append(shot)

    # Pass 2: fresh timed runs of the first timed_prompts prompts (the chosen settings' arms).
    names = None
    if shots and timed_settings is not None:
        frames = {m: _frame([r for p in per_prompt for r in p[m]]) for m in modes}
        names = set(timed_settings(frames))
    timed_list = [s for s in settings if names is None or s.name in names]
    for j, shot in enumerate(shots):
        pid, ids, split, forced = shot.prompt["prompt_id"], shot.ids, shot.split, shot.forced
        arms = {
            DENSE_PATH: lambda ids=ids, split=split: run_dense(loaded, ids, kw_t, split),
            DENSE_STATIC_PATH: lambda ids=ids, split=split: run_dense(loaded, ids, kw_t, split, True),
        }
        for mode in modes:
            for s in timed_list:
                for path in decode_paths:
                    arms[mode, s.name, path] = lambda ids=ids, s=s, p=path, m=mode, f=forced, q=split: (
                        run_tiered(loaded, ids, s, p, kw_t, f, m, q)
                    )
        phased = list(arms) if j < decomposition_prompts else []
        for key in phased:
            arms["phases", key] = lambda arm=arms[key]: instrumented(loaded, device, arm)
        warm = generation["warmup"] if j == 0 else 0
        timed = interleaved(arms, generation["repeats"], warm, start=j)
        for path in (DENSE_PATH, DENSE_STATIC_PATH):
            _check_same(timed[path], path, pid)
        if timed[DENSE_PATH][0].result.tokens != shot.ref_tokens:
            raise DeterminismError(f"prompt {pid}: a fresh dense run differs from the shared prefill's")
        for key, run in shot.runs.items():
            if key in timed:
                _check_fresh(timed[key], run, f"tiered ({key[1]}, {key[0]}, {key[2]})", pid)
        for key in phased:  # the instrumented runs: gated like the others, then decomposed
            got = timed["phases", key]
            fresh = [r for r, _ in got]
            if key in shot.runs:
                mode, name, path = key
                _check_fresh(fresh, shot.runs[key], f"instrumented tiered ({name}, {mode}, {path})", pid)
                decomposition.extend(decomposition_rows(shot.prompt, mode, name, path, got, timed[key]))
                continue
            if fresh[0].result.tokens != timed[key][0].result.tokens:
                raise DeterminismError(f"prompt {pid}: an instrumented {key} run changed its tokens")
            for mode in modes:
                decomposition.extend(decomposition_rows(shot.prompt, mode, key, key, got, timed[key]))
        per_prompt[j] = rows_of(shot, timed)
    return {m: _frame([r for p in per_prompt for r in p[m]]) for m in modes}


# The exactness columns a timed job's rows must share with the untimed job's rows of the same prompt.
_MERGE_KEY = ["setting", "query_mode", "context", "prompt_id", "decode_path"]
_MERGE_SAME = ["exact", "output_ids", "stored_tokens", "logical_tokens", "kv_bytes_stored", "kv_bytes_peak"]


def merge_timed(exact: pd.DataFrame, timed: pd.DataFrame) -> pd.DataFrame:
    """The untimed job's rows with a timed job's rows in their place.

    The promotion's exactness runs (every promoted setting on every prompt) run beside other jobs;
    a timed job reruns the headline setting on the first timed prompts with its clocks and must
    compute what they computed: every timed row replaces the exactness row of the same (setting,
    mode, context, prompt, path), whose tokens and KV accounting it must equal (else
    :class:`DeterminismError`: two jobs of one run disagree)."""
    index = {tuple(k): i for i, k in enumerate(exact[_MERGE_KEY].itertuples(index=False))}
    out = exact.copy()
    for _, row in timed.iterrows():
        key = tuple(row[_MERGE_KEY])
        if key not in index:
            raise ValueError(
                f"timed row {dict(zip(_MERGE_KEY, key, strict=True))} has no exactness row to replace"
            )
        i = index[key]
        before = exact.iloc[i]
        for c in _MERGE_SAME:
            a, b = before[c], row[c]
            same = list(a) == list(b) if c == "output_ids" else (pd.isna(a) and pd.isna(b)) or a == b
            if not same:
                raise DeterminismError(
                    f"prompt {key[3]}: {key[0]} ({key[1]}, {key[4]}): the timed job's {c} {b!r} differs "
                    f"from the exactness job's {a!r}"
                )
        for c in timed.columns:
            if c in out.columns:
                out.at[out.index[i], c] = row[c]
    return _frame(out.to_dict("records"))  # the harness's columns (provenance is the writer's)


@dataclass
class _Shared:
    """One prompt's shared-prefill results, kept for its timed runs' determinism gate."""

    prompt: dict
    ids: torch.Tensor
    split: int
    forced: dict[int, list[int]] | None
    ref_tokens: list[int]
    dense: TieredRun
    runs: dict


def measure_setting(
    loaded: LoadedModel,
    prompts: pd.DataFrame,
    setting: TieredSetting,
    decode_paths: list[str],
    generation: dict,
    device: torch.device,
    query_mode: str = QUESTION_AWARE,
    **kw,
) -> pd.DataFrame:
    """One setting in one mode, every prompt timed (:func:`measure` with defaults for one frame)."""
    return measure(loaded, prompts, [setting], decode_paths, generation, device, [query_mode], **kw)[
        query_mode
    ]


def measure_controls(
    loaded: LoadedModel,
    prompts: pd.DataFrame,
    settings: list[TieredSetting],
    kinds: list[str],
    generation: dict,
    device: torch.device,
    modes: Iterable[str] = (QUESTION_AWARE,),
    dense_reference: dict[str, list[int]] | None = None,
    seed: int = 0,
    progress=None,
    decode_path: str = "densify",
) -> dict[str, pd.DataFrame]:
    """Negative controls matched to each of ``settings``, untimed, one frame per mode: a row per
    (control, prompt) plus the matched setting's own row from the same shared prefill, and the
    dense reference rows (``control`` and ``matched_to`` say which is which), on ``decode_path``."""
    from bcr.tiered import controls

    specs = {s.name: (None, s.name) for s in settings}
    all_settings = list(settings)
    for s in settings:
        for k in kinds:
            c = controls.matched(s, k, seed)
            specs[c.name] = (k, s.name)
            all_settings.append(c)
    frames = measure(
        loaded,
        prompts,
        all_settings,
        [decode_path],
        generation,
        device,
        modes,
        timed_prompts=0,
        dense_reference=dense_reference,
        progress=progress,
    )
    out = {}
    for mode, df in frames.items():
        df = df[df["decode_path"] != DENSE_PATH].reset_index(drop=True)
        df["control"] = df["setting"].map(lambda n: specs[n][0])
        df["matched_to"] = df["setting"].map(lambda n: specs[n][1])
        out[mode] = df
    return out
