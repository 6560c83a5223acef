"""The serving summary, shaped like the note's Result 1: per workload, ``arm`` against each baseline.

Rows are paired by request (every arm serves the same requests in the same order): a request counts
only where it completed in both arms.  Per (engine, workload, reuse, baseline): the cached-token
delta (arm − baseline, over all requests, so a failed request cannot hide a reuse difference), TTFT
p50 and p99 and E2E p50 ratios with percentile-bootstrap intervals over requests (pairs kept
whole), failed requests per arm, and how many paired requests got identical output tokens.
``reuse`` is ``cached`` for the arms' own runs and ``force_miss`` for the 0%-reuse runs.
"""

from __future__ import annotations

import pandas as pd

from bcr.contracts import SERVING_SUMMARY_COLUMNS
from bcr.ledger.stats import paired_quantile_ratio_interval

RATIOS = (("ttft_p50", "ttft_s", 0.5), ("ttft_p99", "ttft_s", 0.99), ("e2e_p50", "e2e_s", 0.5))


def summarise(requests: pd.DataFrame, arm: str = "bcr", bootstrap: dict | None = None) -> pd.DataFrame:
    """One row per (engine, workload, reuse, baseline arm) from the request rows of every arm."""
    boot = {"level": 0.95, "resamples": 2000, "seed": 0, **(bootstrap or {})}
    recs = []
    df = requests.copy()
    df["reuse"] = df["force_miss"].map({True: "force_miss", False: "cached"})
    for (engine, workload, reuse), g in df.groupby(["engine", "workload", "reuse"], sort=True):
        ours = g[g["arm"] == arm].set_index("request_id")
        if ours.empty:
            continue
        for baseline in sorted(set(g["arm"]) - {arm}):
            base = g[g["arm"] == baseline].set_index("request_id")
            if set(base.index) != set(ours.index):
                raise ValueError(
                    f"{engine}/{workload} {reuse}: {arm} and {baseline} served different requests"
                )
            base = base.loc[ours.index]
            ok = ours["error"].isna() & base["error"].isna()
            a, b = ours[ok], base[ok]
            rec = {
                "engine": engine,
                "workload": workload,
                "reuse": reuse,
                "arm": arm,
                "baseline": baseline,
                "n": int(ok.sum()),
                "errors_arm": int(ours["error"].notna().sum()),
                "errors_baseline": int(base["error"].notna().sum()),
                "cached_tokens_arm": int(ours["cached_tokens"].fillna(0).sum()),
                "cached_tokens_baseline": int(base["cached_tokens"].fillna(0).sum()),
                "outputs_equal": int(
                    sum(list(x) == list(y) for x, y in zip(a["output_ids"], b["output_ids"], strict=True))
                ),
                "ttft_p50_arm_ms": float(a["ttft_s"].median() * 1e3),
                "ttft_p50_baseline_ms": float(b["ttft_s"].median() * 1e3),
            }
            rec["cached_delta"] = rec["cached_tokens_arm"] - rec["cached_tokens_baseline"]
            for key, col, q in RATIOS:
                iv = paired_quantile_ratio_interval(a[col].to_numpy(), b[col].to_numpy(), q=q, **boot)
                rec[f"{key}_ratio"], rec[f"{key}_low"], rec[f"{key}_high"] = iv.point, iv.low, iv.high
            recs.append(rec)
    return pd.DataFrame(recs, columns=SERVING_SUMMARY_COLUMNS)


def describe(summary: pd.DataFrame) -> str:
    """The Result-1 table as text, for the rule's log."""
    cols = ["engine", "workload", "reuse", "baseline", "n", "cached_delta", "outputs_equal",
            "ttft_p50_ratio", "ttft_p99_ratio", "e2e_p50_ratio"]  # fmt: skip
    return summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")
