"""The sweep's promotion decision and the summary tables shaped like the note's.

* :func:`promote` reads the sweep rows of every setting (at the sweep context) and decides what the
  promotion contexts run: the settings exact on every prompt, or the config's explicit override.
  Controls (``keep_all``) are checked, not promoted: a control keeps every page exact, so it must equal
  dense on every prompt — if it does not, the harness is broken and the checkpoint fails.  Promoting it
  would spend promotion time re-measuring dense against itself, and it would count a setting that
  compresses nothing as a "promoted setting".
* :func:`sweep_summary` — note table 1: setting -> exact? (with n/N, compression, and what was lost);
* :func:`promotion_summary` — note table 2: setting, context, exactness n/N, compression, stored fraction,
  TTFT/TPOT ratios, peak dense/tiered and the peak reduction (CUDA memory; the KV-byte account beside it).
"""

from __future__ import annotations

import pandas as pd

from bcr.contracts import DENSE_PATH, PROMOTION_SUMMARY_COLUMNS, SWEEP_SUMMARY_COLUMNS


class ControlFailedError(RuntimeError):
    """A control setting (nothing compressed) did not reproduce dense outputs: the harness is broken."""


def _answer_exact(g: pd.DataFrame) -> pd.Series:
    """Exact over the answer span (the primary measure); files without the column: the trajectory."""
    return (g["exact_answer"] if "exact_answer" in g else g["exact"]).astype(bool)


def _failure(g: pd.DataFrame) -> str | None:
    bad = g[~_answer_exact(g)]
    if bad.empty:
        return None
    r = bad.iloc[0]
    return f"{r['prompt_id']}: diverged at token {r['first_divergence']}; {r['lost']}"


def _group_stats(g: pd.DataFrame) -> dict:
    n = len(g)
    k = int(_answer_exact(g).sum())
    return {
        "n_prompts": n,
        "n_exact": k,
        "exact": bool(k == n and n > 0),
        "exactness": f"{k}/{n}",
        "n_exact_trajectory": int(g["exact"].astype(bool).sum()),
        "n_degenerate": int(g["degenerate"].astype(bool).sum()) if "degenerate" in g else 0,
        "compression": float(g["compression"].median()),
        "stored_fraction": float(g["stored_fraction"].median()),
        "first_failure": _failure(g),
    }


def sweep_summary(rows: pd.DataFrame, controls: list[str], promoted: list[str]) -> pd.DataFrame:
    """One row per (setting, tiered decode path): exact on every prompt?"""
    out = []
    tiered = rows[rows["decode_path"] != DENSE_PATH]
    keys = ["setting", "query_mode", "context", "decode_path"]
    for (setting, mode, context, path), g in tiered.groupby(keys, sort=False):
        out.append(
            {
                "setting": setting,
                "query_mode": mode,
                "context": int(context),
                "decode_path": path,
                **_group_stats(g),
                "control": setting in controls,
                "promoted": setting in promoted,
            }
        )
    return pd.DataFrame(out, columns=SWEEP_SUMMARY_COLUMNS)


def promote(
    rows: pd.DataFrame,
    settings: list[str],
    controls: list[str],
    override: list[str] | None,
    max_settings: int | None = None,
) -> dict:
    """The promotion decision (written as ``promoted.json``; the promotion rules read ``run``).

    A setting is promoted when every tiered decode path was exact on every sweep prompt, over the
    answer span (the primary measure); a control must reproduce the whole trajectory.  With
    ``max_settings``, only that many of the exact settings are promoted, highest sweep compression first
    (ties keep the sweep order): the ones the headline claims are about.  The exact settings held back
    are listed as ``held_back``, so the record still says what the sweep found.
    """
    missing = sorted(set(settings) - set(rows["setting"]))
    if missing:
        raise ValueError(f"sweep rows lack settings {missing}")
    if rows["query_mode"].nunique() > 1:
        raise ValueError(
            f"sweep rows mix query modes {sorted(set(rows['query_mode']))}; each is promoted alone"
        )
    tiered = rows[rows["decode_path"] != DENSE_PATH]
    exact = {s: bool(_answer_exact(g).all()) and len(g) > 0 for s, g in tiered.groupby("setting")}
    whole = {s: bool(g["exact"].astype(bool).all()) and len(g) > 0 for s, g in tiered.groupby("setting")}
    failed_controls = [c for c in controls if not whole.get(c, False)]
    if failed_controls:
        detail = "; ".join(f"{c}: {_failure(tiered[tiered['setting'] == c])}" for c in failed_controls)
        raise ControlFailedError(
            f"control setting(s) {failed_controls} keep every page exact yet differ from dense ({detail}); "
            "the tiered harness is broken, so no promotion decision is made"
        )
    exact_settings = [s for s in settings if s not in controls and exact.get(s, False)]
    promoted = exact_settings
    compression = tiered.groupby("setting")["compression"].median()
    if max_settings is not None:
        ranked = sorted(exact_settings, key=lambda s: (-float(compression[s]), exact_settings.index(s)))
        promoted = [s for s in exact_settings if s in ranked[:max_settings]]
    contexts = sorted({int(c) for c in rows["context"]})
    if len(contexts) != 1:
        raise ValueError(f"sweep rows span several contexts {contexts}; the sweep runs at one")
    run = list(override) if override is not None else promoted
    return {
        "sweep_context": contexts[0],
        "promoted": promoted,
        "held_back": [s for s in exact_settings if s not in promoted],
        "max_settings": max_settings,
        "not_promoted": [s for s in settings if s not in controls and not exact.get(s, False)],
        "controls": {c: exact[c] for c in controls},
        "override": override,
        "run": run,
        "most_compressed": most_compressed(compression, run),
        "source": "override" if override is not None else "sweep",
    }


def most_compressed(compression: pd.Series, run: list[str]) -> str | None:
    """The run setting storing the least at the sweep (highest median compression; ties: run order).

    ``compression``: each setting's median over the sweep's tiered rows.  The negative controls and
    the test-bed claim are about this setting, so it is chosen from the sweep's own rows, before
    any control has run.  A run setting the sweep did not measure ranks last.
    """
    if not run:
        return None
    return min(run, key=lambda s: (-float(compression.get(s, float("-inf"))), run.index(s)))


def promotion_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, context, tiered decode path) with the note's promotion columns."""
    out = []
    if rows.empty:
        return pd.DataFrame(out, columns=PROMOTION_SUMMARY_COLUMNS)
    for (setting, mode, context), g in rows.groupby(["setting", "query_mode", "context"], sort=True):
        dense = g[g["decode_path"] == DENSE_PATH]
        for path, t in g[g["decode_path"] != DENSE_PATH].groupby("decode_path", sort=False):
            dense_peak = dense["peak_mem_bytes"].max() if dense["peak_mem_bytes"].notna().any() else None
            tiered_peak = t["peak_mem_bytes"].max() if t["peak_mem_bytes"].notna().any() else None
            dense_kv = int(dense["kv_bytes_peak"].max())
            tiered_kv = int(t["kv_bytes_peak"].max())
            stats = _group_stats(t)
            out.append(
                {
                    "setting": setting,
                    "query_mode": mode,
                    "context": int(context),
                    "decode_path": path,
                    **{k: v for k, v in stats.items() if k != "first_failure"},
                    "ttft_ratio": float(t["ttft_ratio"].median()),
                    "tpot_ratio": float(t["tpot_ratio"].median()),
                    "dense_peak_mem_bytes": None if dense_peak is None else int(dense_peak),
                    "tiered_peak_mem_bytes": None if tiered_peak is None else int(tiered_peak),
                    "delta_vram_pct": None
                    if dense_peak is None or tiered_peak is None
                    else 100.0 * (dense_peak - tiered_peak) / dense_peak,
                    "dense_kv_bytes_peak": dense_kv,
                    "tiered_kv_bytes_peak": tiered_kv,
                    "delta_kv_peak_pct": 100.0 * (dense_kv - tiered_kv) / dense_kv,
                    "first_failure": stats["first_failure"],
                }
            )
    df = pd.DataFrame(out, columns=PROMOTION_SUMMARY_COLUMNS)
    for c in ("dense_peak_mem_bytes", "tiered_peak_mem_bytes"):
        df[c] = df[c].astype("Int64")
    df["delta_vram_pct"] = df["delta_vram_pct"].astype("Float64")
    return df
