"""Every press's rows beside ours: the tiered rows of each matched setting, same prompts and mode.

Ours come from the files the tiered track already wrote -- the sweep (the headline at the sweep
context), the primary model's frontier (the lower points) and the promotion runs (the headline at the
larger contexts) -- exactness on one decode path (it does not depend on it: tests/tiered), the
clocks from the page-native one.  A press
point without tiered rows at a context (a frontier point above the sweep context) stays in the table
unmatched; the ledger compares only where both are present.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from bcr import contracts as C


def ours(
    tiered: Iterable[pd.DataFrame],
    points: pd.DataFrame,
    decode_path: str = C.DECODE_PATHS[0],
    timed_path: str = "paged",
) -> pd.DataFrame:
    """Our rows of each matched (family, mode, setting) at each context, shaped like the press rows:
    exactness and storage from ``decode_path``, the clocks (ratios to our dense, where a timed
    promotion run measured them) from ``timed_path``, the page-native path the speed claims read."""
    keys = [C.WORKLOAD, C.QUERY_MODE, "setting_matched"]
    targets = points.drop_duplicates(keys)[[*keys, "target_stored_fraction"]]
    frames, clocks = [], []
    for df in tiered:
        if df is None or df.empty:
            continue
        df = df.rename(columns={"setting": "setting_matched"})
        if "decode_path" in df.columns:
            clocks.append(df[df["decode_path"] == timed_path])
            df = df[df["decode_path"] == decode_path]
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=[*C.PEERS_COLUMNS, *C.PROVENANCE_COLUMNS])
    rows = pd.concat(frames, ignore_index=True).merge(targets, on=keys, how="inner")
    rows = rows.drop_duplicates([*keys, "context", "prompt_id"])
    clock_cols = ["ttft_s", "tpot_s", "ttft_ratio", "tpot_ratio"]
    rows = rows.drop(columns=[c for c in clock_cols if c in rows])
    at = [*keys, "context", "prompt_id"]
    timed = pd.concat(clocks, ignore_index=True) if clocks else pd.DataFrame(columns=at)
    for col in clock_cols:
        if col not in timed:
            timed[col] = None
    timed = timed.drop_duplicates(at)[[*at, *clock_cols]]
    rows = rows.merge(timed, on=at, how="left")
    rows["press"] = C.OURS_PRESS
    rows["compression_ratio"] = 1.0 - rows["target_stored_fraction"]
    for col in ("hook_equal", "pipeline_equal", "dense_equal_main", "error"):  # the presses' checks
        rows[col] = None
    rows["masks"] = False  # our phantom pages are stored summaries, not masked tokens
    rows["effective_stored_fraction"] = rows["stored_fraction"]
    return rows[[*C.PEERS_COLUMNS, *C.PROVENANCE_COLUMNS]]


def comparison(runs: Iterable[pd.DataFrame], tiered: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """The press rows and ours in one frame, each row with its own provenance (the presses' name the
    peer environment's transformers and torch)."""
    cols = [*C.PEERS_COLUMNS, *C.PROVENANCE_COLUMNS]
    presses = pd.concat([r for r in runs if r is not None and len(r)], ignore_index=True)
    out = pd.concat([presses[cols], ours(tiered, presses)], ignore_index=True)
    order = [C.WORKLOAD, C.QUERY_MODE, "context", "press", "setting_matched", "prompt_id"]
    return out.sort_values(order, kind="stable").reset_index(drop=True)
