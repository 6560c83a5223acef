"""Derived tables: per-prompt result rows reduced to what the ledger decides on and the pages show.

Claims and pages call the same functions, so a number in the ledger and the same number on a
track page cannot disagree.  Per-prompt tables are the source of truth; a track's own summary
Parquet, if any, is not read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bcr import contracts as C
from bcr.headline import (  # noqa: F401 (the ledger's names for them)
    Headline,
    SettingStatus,
    answer_exactness,
    headline,
    index_text,
    setting_status,
)
from bcr.ledger.stats import geomean, geomean_interval, p50_ratio_interval

DENSE_PATH = "dense"
GIB = 2**30
# The intervals the pages show beside a ratio: the claim file's bootstrap unless the caller passes one.
DEFAULT_BOOTSTRAP = {"level": 0.95, "resamples": 2000, "seed": 20250101}
INTERVAL_METRICS = (
    "compression",
    "ttft_ratio",
    "tpot_ratio",
    "tpot_ratio_static",
    "kv_peak_ratio",
    "kv_decode_ratio",
    "peak_mem_ratio",
)


def with_intervals(rec: dict, g: pd.DataFrame, metrics: tuple[str, ...], bootstrap: dict | None) -> dict:
    """Add ``{metric}``, ``{metric}_low``, ``{metric}_high`` (geometric mean, bootstrap interval) to ``rec``.

    The same seeded bootstrap as the ledger's ratio rule: a page's interval for the headline
    setting at the largest context is the ledger's interval.
    """
    b = {**DEFAULT_BOOTSTRAP, **(bootstrap or {})}
    for m in metrics:
        if m not in g.columns:
            rec[m] = rec[f"{m}_low"] = rec[f"{m}_high"] = math.nan
            continue
        vals = pd.to_numeric(g[m], errors="coerce").to_numpy(dtype=float)
        iv = geomean_interval(vals, level=b["level"], resamples=b["resamples"], seed=b["seed"])
        rec[m], rec[f"{m}_low"], rec[f"{m}_high"] = iv.point, iv.low, iv.high
        rec[f"{m}_n"] = iv.n
    return rec


# --- tiered ----------------------------------------------------------------------------------------


def _dense_baseline(df: pd.DataFrame, dense: pd.DataFrame | None, col: str) -> tuple[pd.Series, str]:
    """Per tiered row, the dense value of ``col`` for the same prompt, and where it came from.

    Preference: a ``{col}_dense`` column on the row; the ``decode_path == dense`` row of the same
    (setting, context, prompt) in the same table (measured in the same process); the dense
    baseline run of the same prompt (``results/dense``; ``kv_bytes`` stands for ``kv_bytes_peak``).
    """
    if f"{col}_dense" in df.columns:
        return pd.to_numeric(df[f"{col}_dense"], errors="coerce").astype(float), "same row"
    keys = [k for k in ("setting", "query_mode", "context", "prompt_id") if k in df.columns]
    rows = df[df["decode_path"] == DENSE_PATH]
    if len(rows):
        base = rows.drop_duplicates(keys).set_index(keys)[col]
        idx = pd.MultiIndex.from_frame(df[keys])
        return pd.Series(base.reindex(idx).to_numpy(), index=df.index, dtype=float), "same run"
    src = "kv_bytes" if col == "kv_bytes_peak" else col
    if dense is not None and len(dense) and src in dense.columns:
        base = dense.drop_duplicates(["context", "prompt_id"]).set_index(["context", "prompt_id"])[src]
        idx = pd.MultiIndex.from_frame(df[["context", "prompt_id"]])
        return pd.Series(base.reindex(idx).to_numpy(), index=df.index, dtype=float), "dense baseline run"
    return pd.Series(math.nan, index=df.index, dtype=float), "none"


def tiered_rows(df: pd.DataFrame | None, dense: pd.DataFrame | None = None) -> pd.DataFrame:
    """Tiered rows (every decode path but ``dense``) with the derived per-prompt ratios.

    ``peak_mem_ratio`` = tiered / dense CUDA peak; ``kv_peak_ratio`` = tiered / dense peak KV bytes;
    ``kv_peak_vs_stored`` = ``kv_peak_ratio / stored_fraction`` (1.0 when the peak KV footprint
    shrinks exactly as the stored representation does).  ``kv_decode_ratio`` / ``kv_decode_vs_stored``
    are the same on the decode-phase high-water mark (``kv_bytes_peak_decode``): the overall peak
    includes the dense prefill's, which no decode path can lower, so a memory claim about decoding
    that read it would be rejected by construction.
    """
    if df is None or len(df) == 0:
        return pd.DataFrame()
    out = df.copy()
    out["context"] = out["context"].astype(int)
    sources = {}
    if "kv_bytes_peak_decode" not in out.columns:
        out["kv_bytes_peak_decode"] = math.nan  # an older file: the decode-phase peak was not recorded
    for col in ("peak_mem_bytes", "kv_bytes_peak", "kv_bytes_peak_decode"):
        out[f"{col}_dense"], sources[col] = _dense_baseline(out, dense, col)
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    # exactness on the answer span, the whole trajectory beside it (bcr.headline: one definition)
    out = answer_exactness(out)
    out["peak_mem_ratio"] = out["peak_mem_bytes"] / out["peak_mem_bytes_dense"]
    out["kv_peak_ratio"] = out["kv_bytes_peak"] / out["kv_bytes_peak_dense"]
    out["kv_peak_vs_stored"] = out["kv_peak_ratio"] / out["stored_fraction"].astype(float)
    out["kv_decode_ratio"] = out["kv_bytes_peak_decode"] / out["kv_bytes_peak_decode_dense"]
    out["kv_decode_vs_stored"] = out["kv_decode_ratio"] / out["stored_fraction"].astype(float)
    out.attrs["dense_source"] = sources
    return out


@dataclass
class DenseRightBest:
    """The most compressed setting exact on every prompt the dense reference answered right."""

    setting: str
    compression: float
    stored_fraction: float
    n_dense_right: int  # prompts at the promotion contexts dense answered right (the n of the claim)
    n_prompts: int  # all prompts at those contexts


def most_compressed_dense_right(
    promotion: pd.DataFrame | None, contexts: list[int], decode_path: str, exclude: list[str]
) -> DenseRightBest | None:
    """Among the promoted settings with rows at every promotion context: the one with the highest
    compression at the largest context whose answer span is exact on every prompt the dense row
    answered right (a prompt dense gets wrong never needed the needle's pages).  ``promotion``: the
    raw promotion rows, dense rows included.  None when no setting is."""
    if promotion is None or len(promotion) == 0:
        return None
    df = promotion[promotion["context"].astype(int).isin(contexts)]
    dense = df[df["decode_path"] == DENSE_PATH]
    right = {(int(r.context), r.prompt_id) for r in dense.itertuples() if bool(r.answer_correct)}
    every = {(int(r.context), r.prompt_id) for r in dense.itertuples()}
    rows = tiered_rows(df)
    if len(rows) == 0 or not right:
        return None
    best = None
    for setting, g in rows[rows["decode_path"] == decode_path].groupby("setting", sort=True):
        if setting in exclude or set(g["context"]) != set(contexts):
            continue
        keys = list(zip(g["context"], g["prompt_id"], strict=True))
        if not right <= set(keys) or not g[[k in right for k in keys]]["exact"].all():
            continue  # a dense-right prompt missing or not exact
        top = g[g["context"] == max(contexts)]
        cand = DenseRightBest(
            str(setting),
            geomean(top["compression"]),
            float(top["stored_fraction"].median()),
            len(right),
            len(every),
        )
        if best is None or (cand.compression, cand.setting) > (best.compression, best.setting):
            best = cand
    return best


def promoted_settings(promoted: Any) -> list[str] | None:
    """The settings ``promoted.json`` names (a list, or a mapping holding one), else ``None``."""
    if isinstance(promoted, list):
        return [str(s) for s in promoted]
    if isinstance(promoted, dict):
        for key in ("promoted", "settings"):
            val = promoted.get(key)
            if isinstance(val, list):
                return [str(s) if not isinstance(s, dict) else str(s.get("setting")) for s in val]
    return None


def sweep_table(
    rows: pd.DataFrame, reference: dict, promoted: list[str] | None, bootstrap: dict | None = None
) -> pd.DataFrame:
    """The note's 8K table: per setting and decode path, exact n/N, compression, where it diverged."""
    if len(rows) == 0:
        return pd.DataFrame()
    note = {r["setting"]: r["exact"] for r in reference.get("sweep", {}).get("rows", [])}
    recs = []
    for (setting, path), g in rows.groupby(["setting", "decode_path"], sort=True):
        bad = g[~g["exact"]]
        exact = bool(g["exact"].all())
        note_exact = note.get(setting)
        rec = {
            "setting": setting,
            "decode_path": path,
            "context": int(g["context"].iloc[0]),
            "n": len(g),
            "n_exact": int(g["exact"].sum()),
            "n_exact_trajectory": int(g["exact_trajectory"].sum()),
            "exact": exact,
            "compression": geomean(g["compression"]),
            "stored_fraction": float(g["stored_fraction"].mean()),
            "first_divergence": index_text(bad["first_divergence"].min()) if len(bad) else "—",
            "lost": _first_text(bad, "lost"),
            "max_logit_diff": float(g["max_logit_diff"].max()),
            "promoted": (setting in promoted) if promoted is not None else None,
            "note_exact": note_exact,
            "differs_from_note": None if note_exact is None else exact != bool(note_exact),
        }
        recs.append(with_intervals(rec, g, ("compression",), bootstrap))
    return pd.DataFrame(recs)


def _first_text(rows: pd.DataFrame, col: str) -> str | None:
    """The first non-empty ``col`` (the tiered track's account of which page was lost), if recorded."""
    if col not in rows.columns:
        return None
    vals = [str(v) for v in rows[col] if not _missing(v) and str(v)]
    return vals[0] if vals else None


def _missing(v: Any) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def promotion_table(
    rows: pd.DataFrame, reference: dict, note_context: dict[int, int], bootstrap: dict | None = None
) -> pd.DataFrame:
    """The note's promotion table, ours per (setting, context, decode path) with the note's beside it."""
    if len(rows) == 0:
        return pd.DataFrame()
    note = {(r["setting"], int(r["context"])): r for r in reference.get("promotion", {}).get("rows", [])}
    recs = []
    for (setting, context, path), g in rows.groupby(["setting", "context", "decode_path"], sort=True):
        peak_ratio = geomean(g["peak_mem_ratio"])
        ref = note.get((setting, note_context.get(int(context), int(context))), {})
        rec = {
            "setting": setting,
            "context": int(context),
            "decode_path": path,
            "n": len(g),
            "n_exact": int(g["exact"].sum()),
            "n_exact_trajectory": int(g["exact_trajectory"].sum()),
            "compression": geomean(g["compression"]),
            "stored_fraction": float(g["stored_fraction"].mean()),
            "ttft_ratio": geomean(g["ttft_ratio"]),
            "tpot_ratio": geomean(g["tpot_ratio"]),
            "kv_peak_ratio": geomean(g["kv_peak_ratio"]),
            "kv_decode_ratio": geomean(g["kv_decode_ratio"]),
            "peak_dense_gib": _max_gib(g["peak_mem_bytes_dense"]),
            "peak_tiered_gib": _max_gib(g["peak_mem_bytes"]),
            "dvram_pct": (1.0 - peak_ratio) * 100 if not math.isnan(peak_ratio) else math.nan,
            "note_context": ref.get("context"),
            "note_exact": f"{ref['exact']}/{ref['n']}" if ref else None,
            "note_compression": ref.get("compression"),
            "note_ttft_ratio": ref.get("ttft_ratio"),
            "note_tpot_ratio": ref.get("tpot_ratio"),
            "note_dvram_pct": ref.get("dvram_pct"),
            "note_peak_dense_gib": ref.get("peak_dense_gib"),
            "note_peak_tiered_gib": ref.get("peak_tiered_gib"),
            "note_n": ref.get("n"),
            "ttft_ms": _median_ms(g, "ttft_s"),
            "tpot_ms": _median_ms(g, "tpot_s"),
        }
        recs.append(with_intervals(rec, g, INTERVAL_METRICS, bootstrap))
    return pd.DataFrame(recs)


def _median_ms(g: pd.DataFrame, col: str) -> float:
    if col not in g.columns:
        return math.nan
    s = pd.to_numeric(g[col], errors="coerce").dropna()
    return float(s.median()) * 1000 if len(s) else math.nan


def _max_gib(s: pd.Series) -> float:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.max()) / GIB if len(s) else math.nan


# --- serving ---------------------------------------------------------------------------------------


def serving_table(summary: pd.DataFrame | None, reference: dict, arm: str, baseline: str) -> pd.DataFrame:
    """Result 1 from the serving summary (:mod:`bcr.serving.summary`, paired by request): per
    (engine, workload), ``arm / baseline`` with reuse, beside the note's reference values."""
    if summary is None or len(summary) == 0:
        return pd.DataFrame()
    note = {r["workload"]: r for r in reference.get("serving", {}).get("rows", [])}
    rows = summary[
        (summary["reuse"] == "cached") & (summary["arm"] == arm) & (summary["baseline"] == baseline)
    ]
    recs = []
    for _, r in rows.sort_values(["engine", "workload"]).iterrows():
        ref = note.get(r["workload"], {})
        rec = {
            "engine": r["engine"],
            "workload": r["workload"],
            "n": int(r["n"]),
            "errors": int(r["errors_arm"] + r["errors_baseline"]),
            "cached_delta": int(r["cached_delta"]),
            "cached_tokens": int(r["cached_tokens_arm"]),
            "outputs_equal": int(r["outputs_equal"]),
            "note_cached_delta": ref.get("cached_delta"),
        }
        for key in ("ttft_p50", "ttft_p99", "e2e_p50"):
            rec[f"{key}_ratio"] = r[f"{key}_ratio"]
            rec[f"{key}_ratio_low"] = r[f"{key}_low"]
            rec[f"{key}_ratio_high"] = r[f"{key}_high"]
            rec[f"note_{key}_ratio"] = ref.get(f"{key}_ratio")
        recs.append(rec)
    return pd.DataFrame(recs)


def serving_baselines_table(summary: pd.DataFrame | None, arm: str) -> pd.DataFrame:
    """Every baseline arm, with reuse and at 0% reuse (force-miss): ``arm / baseline`` ratios."""
    if summary is None or len(summary) == 0:
        return pd.DataFrame()
    rows = summary[summary["arm"] == arm].copy()
    for key in ("ttft_p50", "ttft_p99", "e2e_p50"):
        rows[f"{key}_ratio_low"] = rows[f"{key}_low"]
        rows[f"{key}_ratio_high"] = rows[f"{key}_high"]
    return rows.sort_values(["engine", "workload", "reuse", "baseline"]).reset_index(drop=True)


def _q(s: pd.Series, q: float) -> float:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(np.quantile(s, q)) if len(s) else math.nan


def cache_ops_table(df: pd.DataFrame | None, ours: str, baseline: str) -> tuple[pd.DataFrame, list[str]]:
    """µs p50 (p99) per arm for each (workload, page size, op), and ``ours / baseline`` at p50 with
    the bounds the ledger decides by (the two p50s' order-statistic intervals)."""
    if df is None or len(df) == 0:
        return pd.DataFrame(), []
    arms = sorted(df["arm"].unique(), key=lambda a: (a != ours, a))
    recs = []
    for (workload, page, op), g in df.groupby(["workload", "page_size", "op"], sort=True):
        by_arm = g.set_index("arm")
        rec: dict[str, Any] = {"workload": workload, "page_size": int(page), "op": op}
        for a in arms:
            rec[a] = (
                (float(by_arm.loc[a, "us_p50"]), float(by_arm.loc[a, "us_p99"]), int(by_arm.loc[a, "n"]))
                if a in by_arm.index
                else None
            )
        if rec.get(ours) and rec.get(baseline) and rec[baseline][0]:
            iv = p50_ratio_interval(by_arm.loc[ours], by_arm.loc[baseline], rec[ours][2])
            rec["ratio"], rec["ratio_lo"], rec["ratio_hi"] = iv.point, iv.low, iv.high
        else:
            rec["ratio"] = rec["ratio_lo"] = rec["ratio_hi"] = math.nan
        recs.append(rec)
    return pd.DataFrame(recs), arms


# --- long-context correctness, decomposition, peers -------------------------------------------------


def longctx_summary(df: pd.DataFrame | None) -> dict[str, Any] | None:
    if df is None or len(df) == 0:
        return None
    out: dict[str, Any] = {"checked": len(df), "mismatches": int((~df["exact"].astype(bool)).sum())}
    for col in ("tokens_exact", "logprobs_exact", "reused_equals_cold_arm", "reused_equals_cold_baseline"):
        out[col] = int(df[col].astype(bool).sum()) if col in df.columns else None
    out["asks"] = int(df["asks"].iloc[0]) if "asks" in df.columns else None
    out["prompt_tokens"] = int(df["prompt_tokens"].max()) if "prompt_tokens" in df.columns else None
    out["engine"] = str(df["engine"].iloc[0]) if "engine" in df.columns else None
    for arm in ("radix", "bcr"):
        col = f"cached_tokens_{arm}"
        out[f"cached_{arm}"] = int(df[col].sum()) if col in df.columns else None
    return out


def controls_table(df: pd.DataFrame | None) -> pd.DataFrame:
    """Per (context, matched setting, control): prompts exact over the answer span (the primary
    measure, as everywhere in the ledger) with the 95% Clopper–Pearson interval, over the whole
    trajectory, and the stored fraction; the setting's own row first (its control is null)."""
    cols = [
        "context", "matched_to", "control", "n", "n_exact", "exact_low", "exact_high",
        "n_exact_trajectory", "stored_fraction",
    ]  # fmt: skip
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=cols)
    from bcr.ledger.stats import exact_rate_interval

    out = []
    answer = df["exact_answer"] if "exact_answer" in df else df["exact"]
    d = df.assign(
        control=df["control"].fillna(""), context=df["context"].astype(int), answer=answer.astype(bool)
    )
    for (c, s, k), g in d.groupby(["context", "matched_to", "control"], sort=True):
        n, e = len(g), int(g["answer"].sum())
        iv = exact_rate_interval(e, n)
        whole = int(g["exact"].astype(bool).sum())
        out.append([c, s, k or None, n, e, iv.low, iv.high, whole, float(g["stored_fraction"].mean())])
    return pd.DataFrame(out, columns=cols)


def decomposition_table(df: pd.DataFrame | None) -> pd.DataFrame:
    """Per (mode, context, setting, decode path): mean milliseconds per generation in each phase over
    the instrumented prompts, their total, the same arm's uninstrumented time, and the timers' cost
    (``overhead`` = total / uninstrumented - 1).  Dense arms first in each (mode, context)."""
    if df is None or len(df) == 0:
        return pd.DataFrame()
    keys = [C.QUERY_MODE, "context", "setting", "decode_path"]
    d = df.assign(context=df["context"].astype(int))
    wide = d.pivot_table(index=keys, columns="phase", values="seconds", aggfunc="mean") * 1000
    phases = [p for p in C.DECOMPOSITION_PHASES if p in wide.columns]
    wide = wide[phases].rename(columns=lambda p: f"{p}_ms")
    runs = d.drop_duplicates([*keys, "prompt_id"]).groupby(keys)
    wide["n"] = runs.size()
    wide["total_ms"] = runs["total_s"].mean() * 1000
    wide["reference_ms"] = runs["reference_s"].mean() * 1000
    wide["overhead"] = wide["total_ms"] / wide["reference_ms"] - 1
    out = wide.reset_index()
    dense = out["decode_path"].isin([C.DENSE_PATH, C.DENSE_STATIC_PATH])
    out = out.assign(_dense=~dense).sort_values([C.QUERY_MODE, "context", "_dense", "setting", "decode_path"])
    return out.drop(columns="_dense").reset_index(drop=True)


PEERS_TABLE_COLUMNS = [
    "context", C.WORKLOAD, C.QUERY_MODE, "setting_matched", "press", "n", "n_exact", "exact_rate", "exact_low", "exact_high",
    "n_exact_trajectory", "stored_fraction", "accuracy", "kv_bytes_stored", "errors",
    "masks", "effective_stored_fraction", "n_timed", "ttft_ratio", "tpot_ratio",
]  # fmt: skip


def _geomean_of(g: pd.DataFrame, col: str) -> tuple[int, float]:
    """(how many rows have a positive ``col``, their geometric mean)."""
    from bcr.ledger.stats import geomean

    if col not in g:
        return 0, math.nan
    v = pd.to_numeric(g[col], errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return len(v), (geomean(v) if len(v) else math.nan)


def peers_table(df: pd.DataFrame | None) -> pd.DataFrame:
    """Per (context, family, mode, matched setting, press): the answer-span exact count (the primary measure,
    as for the tiered rows) with its 95% Clopper–Pearson interval, the whole-trajectory count, the
    median stored fraction (what the cache holds) and effective fraction (what attention reads: less
    for a press that masks), answer accuracy, stored KV bytes, failed rows, and where timed the
    geometric-mean TTFT and TPOT ratios to the environment's own dense run."""
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=PEERS_TABLE_COLUMNS)
    from bcr.ledger.stats import exact_rate_interval

    out = []
    keys = ["context", C.WORKLOAD, C.QUERY_MODE, "setting_matched", "press"]
    for key, g in df.groupby(keys, sort=True):
        ok = g[g["error"].isna()] if "error" in g else g
        k, n = int(ok[C.EXACT_ANSWER].astype(bool).sum()), len(ok)
        ci = exact_rate_interval(k, n)
        tpot = _geomean_of(ok, "tpot_ratio")
        out.append(
            {
                **dict(zip(keys, key, strict=True)),
                "n": n,
                "n_exact": k,
                "exact_rate": ci.point,
                "exact_low": ci.low,
                "exact_high": ci.high,
                "n_exact_trajectory": int(ok[C.EXACT].astype(bool).sum()),
                "stored_fraction": float(ok["stored_fraction"].median()) if n else math.nan,
                "accuracy": float(ok["answer_correct"].astype(bool).mean()) if n else math.nan,
                "kv_bytes_stored": float(ok["kv_bytes_stored"].median()) if n else math.nan,
                "errors": len(g) - n,
                "masks": bool(ok["masks"].fillna(False).astype(bool).any()) if "masks" in ok else False,
                "effective_stored_fraction": (
                    float(pd.to_numeric(ok["effective_stored_fraction"], errors="coerce").median())
                    if n and "effective_stored_fraction" in ok
                    else math.nan
                ),
                "n_timed": tpot[0],
                "ttft_ratio": _geomean_of(ok, "ttft_ratio")[1],
                "tpot_ratio": tpot[1],
            }
        )
    return pd.DataFrame(out, columns=PEERS_TABLE_COLUMNS)


FRONTIER_TABLE_COLUMNS = [
    "model", C.WORKLOAD, C.QUERY_MODE, "setting", "knob", "knob_value", "n", "n_exact", "exact_low",
    "exact_high", "n_exact_trajectory", "stored_fraction", "compression", "n_dense_correct",
]  # fmt: skip
FRONTIER_SMALLEST_COLUMNS = [
    "model", C.WORKLOAD, C.QUERY_MODE, "points", "n_prompts", "n_dense_correct", "smallest_exact_stored_fraction",
    "setting", "n",
    "exact_low", "exact_high", "least_stored_fraction", "least_stored_setting", "least_stored_exact",
]  # fmt: skip


def frontier_table(df: pd.DataFrame | None) -> pd.DataFrame:
    """Per (model, family, mode, grid point): answer-span exact count with its 95% Clopper–Pearson
    interval, whole-trajectory count, the median stored fraction and compression over prompts, and
    how many prompts the dense reference answered right (None where the rows do not say)."""
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=FRONTIER_TABLE_COLUMNS)
    from bcr.ledger.stats import exact_rate_interval

    keys = ["model", C.WORKLOAD, C.QUERY_MODE, "setting", "knob", "knob_value"]
    answer = (df["exact_answer"] if "exact_answer" in df else df["exact"]).astype(bool)
    out = []
    for key, g in df.assign(answer=answer).groupby(keys, sort=False):
        n, k = len(g), int(g["answer"].sum())
        iv = exact_rate_interval(k, n)
        dense = g["dense_answer_correct"] if "dense_answer_correct" in g else pd.Series(dtype=bool)
        out.append(
            [*key, n, k, iv.low, iv.high, int(g["exact"].astype(bool).sum()),
             float(g["stored_fraction"].median()), float(g["compression"].median()),
             int(dense.astype(bool).sum()) if dense.notna().all() and len(dense) else None]
        )  # fmt: skip
    t = pd.DataFrame(out, columns=FRONTIER_TABLE_COLUMNS)
    return t.sort_values(["model", C.WORKLOAD, C.QUERY_MODE, "stored_fraction"], ignore_index=True)


def frontier_smallest(table: pd.DataFrame, min_n: int = 1) -> pd.DataFrame:
    """Per (model, family, mode): the smallest median stored fraction of a grid point exact on every
    one of at least ``min_n`` prompts (NaN when none is), with that point's n and interval, beside the
    grid's least-storing point and its exact count (how far the grid reached); ``n_prompts`` and
    ``n_dense_correct``: the prompts and how many of them dense answered right."""
    rows = []
    for key, g in table.groupby(["model", C.WORKLOAD, C.QUERY_MODE], sort=True):
        exact = g[(g["n_exact"] == g["n"]) & (g["n"] >= min_n)]
        least = g.sort_values(["stored_fraction", "setting"]).iloc[0]
        best = exact.sort_values(["stored_fraction", "setting"]).iloc[0] if len(exact) else None
        rows.append(
            [
                *key,
                len(g),
                int(least["n"]),
                None if pd.isna(least.get("n_dense_correct")) else int(least["n_dense_correct"]),
                math.nan if best is None else float(best["stored_fraction"]),
                None if best is None else best["setting"],
                0 if best is None else int(best["n"]),
                math.nan if best is None else float(best["exact_low"]),
                math.nan if best is None else float(best["exact_high"]),
                float(least["stored_fraction"]),
                least["setting"],
                f"{int(least['n_exact'])}/{int(least['n'])}",
            ]
        )
    return pd.DataFrame(rows, columns=FRONTIER_SMALLEST_COLUMNS)
