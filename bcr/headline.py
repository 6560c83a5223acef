"""The headline setting: the one promoted setting every tiered claim is about.

Its one home, read by both sides: the ledger decides the tiered claims on it
(:mod:`bcr.ledger.claims`), and a timed promotion run times only it (``bcr tiered run
--time-headline``), since no claim reads another setting's clocks.  The rule's knobs are
``config/claims.yaml``'s ``headline:`` section.  Numpy and pandas only: the tiered track's code hash
follows this module, never the ledger's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bcr.config import ConfigError
from bcr.contracts import DENSE_PATH

RULE_KEYS = ("decode_path", "min_n")


def promotion_contexts(config: dict) -> list[int]:
    """Every context after the first (the first is the sweep context)."""
    return [int(c) for c in config["prompts"]["contexts"][1:]]


def read_rule(path: str | Path) -> dict:
    """The ``headline:`` section of a claim file (its schema is checked with the whole file by the
    ledger; here the keys the choice reads)."""
    rule = (yaml.safe_load(Path(path).read_text()) or {}).get("headline")
    missing = [k for k in RULE_KEYS if not isinstance(rule, dict) or k not in rule]
    if missing:
        raise ConfigError(f"{path}: headline: needs {', '.join(missing)}")
    return rule


def excluded(rule: dict, config: dict) -> list[str]:
    """Settings never chosen: controls (they keep everything exact), the rule's list and the config's."""
    controls = ((config.get("tiered") or {}).get("sweep") or {}).get("controls") or []
    return list(dict.fromkeys([*rule.get("exclude", []), *controls]))


def answer_exactness(df: pd.DataFrame) -> pd.DataFrame:
    """Tiered rows (every decode path but dense) with ``exact`` on the answer span (the note's
    claim, the primary measure) and the whole compared trajectory kept as ``exact_trajectory``."""
    out = df.copy()
    out["context"] = out["context"].astype(int)
    out["exact_trajectory"] = out["exact"].astype(bool)
    out["exact"] = (out["exact_answer"] if "exact_answer" in out else out["exact"]).astype(bool)
    return out[out["decode_path"] != DENSE_PATH].reset_index(drop=True)


@dataclass
class SettingStatus:
    """Exactness of one setting over the promotion contexts."""

    setting: str
    status: str  # "exact" | "mismatch" | "insufficient"
    per_context: dict[int, tuple[int, int]]  # context -> (exact prompts, prompts)
    compression: float  # geometric mean at the largest context with rows
    divergences: list[str] = field(default_factory=list)


def setting_status(
    rows: pd.DataFrame, contexts: list[int], decode_path: str, min_n: int
) -> list[SettingStatus]:
    """Per setting: exact on every prompt at every context with at least ``min_n`` prompts?"""
    if len(rows) == 0:
        return []
    sel = rows[(rows["decode_path"] == decode_path) & rows["context"].isin(contexts)]
    out = []
    for setting, g in sel.groupby("setting", sort=True):
        per = {int(c): (int(h["exact"].sum()), len(h)) for c, h in g.groupby("context")}
        bad = g[~g["exact"]]
        divergences = [
            f"{r.prompt_id} @ {r.context} (first divergence at token {index_text(r.first_divergence)})"
            for r in bad.itertuples()
        ]
        if len(bad):
            status = "mismatch"
        elif all(c in per and per[c][1] >= min_n for c in contexts):
            status = "exact"
        else:
            status = "insufficient"
        largest = max(per)
        comp = _geomean(g[g["context"] == largest]["compression"])
        out.append(SettingStatus(str(setting), status, per, comp, divergences))
    return out


def index_text(v: Any) -> str:
    """A token index for the site (— when missing)."""
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) or pd.isna(v) else str(int(v))


@dataclass
class DenseRight:
    """The headline choice read on the prompts dense answers right only: a prompt dense gets wrong
    never used the retrieved value, and a flipped near-tie there says little about what compression
    lost.  Reported beside the strict reading, never instead of it."""

    setting: str | None  # the most compressed setting exact on every such prompt (None: none is)
    compression: float
    per_context: dict[int, tuple[int, int]]  # context -> (exact, dense-right prompts)

    def text(self) -> str:
        if self.setting is None:
            return "no setting is exact on every prompt dense answers right"
        where = ", ".join(f"{c}: {e}/{n}" for c, (e, n) in sorted(self.per_context.items()))
        return (
            f"{self.setting} ({self.compression:.2f}x) is exact on every prompt dense answers right ({where})"
        )


@dataclass
class Headline:
    """The setting the tiered claims are about (the note's front_ret25 role)."""

    setting: str | None
    exact: bool
    reason: str
    dense_right: DenseRight | None = None  # the same choice on the prompts dense answers right
    compression: float = math.nan  # the setting's, at the largest promotion context


def headline(statuses: list[SettingStatus], exclude: list[str]) -> Headline:
    """The exact setting with the highest compression; else the closest to exact (stated as such)."""
    cands = [s for s in statuses if s.setting not in exclude]
    if not cands:
        return Headline(None, False, "no tiered setting has promotion rows")
    exact = [s for s in cands if s.status == "exact"]
    if exact:
        best = max(exact, key=lambda s: (s.compression, s.setting))
        return Headline(
            best.setting,
            True,
            f"{best.setting}: exact at every promotion context",
            compression=best.compression,
        )

    def frac(s: SettingStatus) -> float:
        good = sum(e for e, _ in s.per_context.values())
        total = sum(n for _, n in s.per_context.values())
        return good / total if total else 0.0

    best = max(cands, key=lambda s: (frac(s), s.compression, s.setting))
    return Headline(
        best.setting,
        False,
        f"{best.setting}: no setting is exact at every promotion context",
        compression=best.compression,
    )


def choose(rule: dict, config: dict, rows: pd.DataFrame | None) -> Headline:
    """The headline of one family's and mode's promotion rows (as written: dense rows included),
    with the dense-right reading beside it (:class:`DenseRight`)."""
    if rows is None or len(rows) == 0:
        return headline([], [])
    contexts, path, min_n = promotion_contexts(config), rule["decode_path"], int(rule["min_n"])
    tiered = answer_exactness(rows)
    exclude = excluded(rule, config)
    out = headline(setting_status(tiered, contexts, path, min_n), exclude)
    right = dense_right_prompts(rows)
    if right is not None:
        keep = [(int(c), p) in right for c, p in zip(tiered["context"], tiered["prompt_id"], strict=True)]
        # the minimum n applies to the prompts read: fewer dense-right prompts cannot be "insufficient"
        statuses = [s for s in setting_status(tiered[keep], contexts, path, 1) if s.setting not in exclude]
        exact = [s for s in statuses if s.status == "exact"]
        best = max(exact, key=lambda s: (s.compression, s.setting)) if exact else None
        out.dense_right = DenseRight(
            best.setting if best else None,
            best.compression if best else math.nan,
            best.per_context if best else {},
        )
    return out


def dense_right_prompts(rows: pd.DataFrame) -> set[tuple[int, str]] | None:
    """(context, prompt_id) of the promotion rows' prompts the dense run answers right (None: the
    rows carry no dense answer)."""
    if "answer_correct" not in rows or DENSE_PATH not in set(rows["decode_path"]):
        return None
    dense = rows[(rows["decode_path"] == DENSE_PATH) & rows["answer_correct"].astype(bool)]
    return set(zip(dense["context"].astype(int), dense["prompt_id"], strict=True))


def _geomean(values: Any) -> float:
    """Geometric mean of the positive finite values (bcr.ledger.stats.geomean's definition)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr) & (arr > 0)]
    return float(np.exp(np.log(arr).mean())) if len(arr) else math.nan
