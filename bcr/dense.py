"""Dense baseline: greedy generation with the stock transformers cache, with a determinism gate.

Every prompt is generated ``repeats`` times with a fresh cache by the shared measuring loop
(:mod:`bcr.measure`); if two runs disagree on a single token the command fails, because every
exactness claim downstream compares against these tokens.
"""

from __future__ import annotations

import pandas as pd
import torch
from tqdm import tqdm

from bcr.contracts import DENSE_COLUMNS, WORKLOAD
from bcr.generation import cache_nbytes, greedy
from bcr.measure import check_repeats, interleaved, max_present, median_present
from bcr.models import LoadedModel
from bcr.prompts import answer_correct, question_split


def run_dense(
    loaded: LoadedModel,
    prompts: pd.DataFrame,
    generation: dict,
    device: torch.device,
    *,
    timed: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per prompt: tokens, correctness, median TTFT/TPOT over repeats, KV bytes, CUDA peaks.

    ``timed=False`` (a job that shares its cores): the clocks are not kept (null TTFT/TPOT) and the
    first prompt gets no warm-up run; tokens, the determinism gate and the KV accounting are the same.
    """
    kw = dict(
        max_new_tokens=generation["max_new_tokens"],
        eos_token_ids=loaded.eos_token_ids,
        stop_at_eos=generation.get("stop_at_eos", True),
    )
    rows = []
    for i, row in enumerate(tqdm(prompts.to_dict("records"), desc="dense", disable=not progress)):
        ids = torch.tensor([list(row["input_ids"])], device=device)

        split = question_split(row)  # context, then question: the chunks the tiered runs prefill

        def once(ids=ids, split=split):
            res, cache = greedy(loaded.model, ids, split=split, **kw)
            return res, cache_nbytes(cache)

        warmup = generation["warmup"] if i == 0 and timed else 0
        runs = interleaved({"dense": once}, generation["repeats"], warmup)["dense"]
        check_repeats([r.tokens for r, _ in runs], "dense", row["prompt_id"])
        first = runs[0][0].tokens
        peaks_prefill = [r.peak_prefill_bytes for r, _ in runs]
        peaks_decode = [r.peak_decode_bytes for r, _ in runs]
        rows.append(
            {
                "prompt_id": row["prompt_id"],
                WORKLOAD: row[WORKLOAD],
                "context": int(row["context"]),
                "prompt_tokens": ids.shape[1],
                "output_ids": first,
                "n_generated": len(first),
                "answer_correct": answer_correct(first, row, loaded.tokenizer),
                "ttft_s": median_present([r.ttft_s for r, _ in runs]) if timed else None,
                "tpot_s": median_present([r.tpot_s for r, _ in runs]) if timed else None,
                "kv_bytes": runs[0][1],
                "peak_mem_bytes": max_present(peaks_prefill + peaks_decode),
                "peak_prefill_bytes": max_present(peaks_prefill),
                "peak_decode_bytes": max_present(peaks_decode),
                "repeats": len(runs),
            }
        )
    df = pd.DataFrame(rows, columns=DENSE_COLUMNS)
    for c in ("peak_mem_bytes", "peak_prefill_bytes", "peak_decode_bytes"):
        df[c] = df[c].astype("Int64")
    for c in ("ttft_s", "tpot_s"):
        df[c] = df[c].astype(float)
    return df
