"""Long-context correctness: the ``longctx`` workload's greedy outputs, ``arm`` against ``baseline``.

Each prompt (near the model's maximum context) is asked ``asks`` times: the first ask meets an
empty cache and prefills everything, later asks reuse its prefix.  Per prompt: ``tokens_exact`` --
every ask produced the same token ids in both arms; ``logprobs_exact`` -- and the same float
log-probability for every one of them (bit for bit; the requests ask for them); ``exact``, what
the ledger reads, is both (a failed request is never exact).  Token ids alone are weak evidence
on a small model: on random-token prompts the tiny model's greedy tokens survive swapped or shifted
prefix slots, its log-probabilities never do (tests/serving).  Then the first divergent ask and
position, the cached tokens each arm reported over all asks, and, per arm,
whether the reused asks reproduced the cold ask's tokens (reuse versus recomputation: the
prefix's K/V come from the pool instead of one long prefill).
"""

from __future__ import annotations

import pandas as pd

from bcr.contracts import LONGCTX_COLUMNS


def _first_difference(x: list[int], y: list[int]) -> int | None:
    for i, (a, b) in enumerate(zip(x, y, strict=False)):
        if a != b:
            return i
    return None if len(x) == len(y) else min(len(x), len(y))


def compare(
    trace: list, ours: pd.DataFrame, base: pd.DataFrame, arm: str, baseline: str, engine: str
) -> pd.DataFrame:
    """Per prompt of the longctx ``trace`` (its ``group`` is the prompt), from both arms' request rows."""
    a, b = ours.set_index("request_id"), base.set_index("request_id")
    by_prompt: dict[int, list] = {}
    for r in trace:
        by_prompt.setdefault(r.group, []).append(r)
    recs = []
    for prompt_id, asks in sorted(by_prompt.items()):
        ids = [r.rid for r in asks]
        ra, rb = a.loc[ids], b.loc[ids]
        errors = int(ra["error"].notna().sum() + rb["error"].notna().sum())
        out_a = [list(v) for v in ra["output_ids"]]
        out_b = [list(v) for v in rb["output_ids"]]
        lp_a = [list(v) for v in ra["output_logprobs"]] if "output_logprobs" in ra else []
        lp_b = [list(v) for v in rb["output_logprobs"]] if "output_logprobs" in rb else []
        div_ask = div_pos = None
        for k, (x, y) in enumerate(zip(out_a, out_b, strict=True)):
            pos = _first_difference(x, y)
            if pos is None and lp_a and lp_b:
                pos = _first_difference(lp_a[k], lp_b[k])
            if pos is not None:
                div_ask, div_pos = k, pos
                break
        tokens_exact = errors == 0 and out_a == out_b
        logprobs_exact = errors == 0 and bool(lp_a) and all(lp_a) and lp_a == lp_b
        recs.append(
            {
                "engine": engine,
                "prompt_id": int(prompt_id),
                "arm": arm,
                "baseline": baseline,
                "asks": len(asks),
                "prompt_tokens": len(asks[0].prompt),
                "exact": tokens_exact and logprobs_exact,
                "tokens_exact": tokens_exact,
                "logprobs_exact": logprobs_exact,
                "first_divergent_ask": div_ask,
                "first_divergence": div_pos,
                "cached_tokens_arm": int(ra["cached_tokens"].fillna(0).sum()),
                "cached_tokens_baseline": int(rb["cached_tokens"].fillna(0).sum()),
                "reused_equals_cold_arm": all(o == out_a[0] for o in out_a[1:]),
                "reused_equals_cold_baseline": all(o == out_b[0] for o in out_b[1:]),
                "errors": errors,
            }
        )
    df = pd.DataFrame(recs, columns=LONGCTX_COLUMNS)
    for col in ("first_divergent_ask", "first_divergence"):
        df[col] = df[col].astype("Int64")
    # the ledger's and site's names for the two arms' cached totals
    df[f"cached_tokens_{arm}"] = df["cached_tokens_arm"]
    df[f"cached_tokens_{baseline}"] = df["cached_tokens_baseline"]
    return df
