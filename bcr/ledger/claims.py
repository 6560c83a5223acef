"""The claim ledger: load config/claims.yaml, evaluate every claim on the results, write the ledger.

Verdicts are computed on every run from the Parquet files, never typed: the claim file holds the
statements and the rules, :mod:`bcr.ledger.rules` the logic, and ``results/ledger.parquet`` one row
per claim with the numbers that decided it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import yaml

from bcr import headline, provenance
from bcr.config import ConfigError
from bcr.headline import promotion_contexts
from bcr.ledger import tables
from bcr.ledger.evidence import Results
from bcr.ledger.rules import RULES, VERDICTS, EvalContext

SCHEMA = Path(__file__).resolve().parent / "claims.schema.yaml"
LEDGER_COLUMNS = [
    "claim_id",
    "claim",  # the claim-file id (claim_id adds the family and mode of a per-mode verdict)
    "workload",
    "query_mode",
    "statement",
    "verdict",
    "note_verdict",
    "evidence",
    "n",
    "value",
    "threshold",
    "reason",
]
EXTRA_COLUMNS = ["track", "ci_low", "ci_high", "value_text", "note_says", "by_construction"]
TRACK_PAGES = {
    "serving": "serving.md",
    "correctness": "correctness.md",
    "tiered": "tiered.md",
    "frontier": "frontier.md",
    "page_native": "decomposition.md",
    "peers": "peers.md",
    "general": "limitations.md",
}


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    track: str
    evidence: str
    rule: dict[str, Any]
    note_verdict: str | None
    note_says: str
    # limitations that can decide this verdict (bcr.ledger.limitations.CAVEATS): marked beside it
    caveats: tuple[str, ...] = ()
    # why the verdict is fixed by arithmetic, whatever is measured (then it is labelled, not a finding)
    by_construction: str | None = None
    per_mode: bool = False  # one verdict per tiered query mode, on the primary prompt family
    per_workload: bool = False  # one verdict per (prompt family, query mode)
    glance: str | None = None  # the headline question it answers (the index's results at a glance)
    note_number: str | None = None  # the note's deciding number, short

    def row_id(self, workload: str | None, mode: str | None) -> str:
        """The ledger row's id: the claim's, with the family and mode of a per-workload verdict or the
        mode of a per-mode one (which is about the primary family)."""
        if mode is None:
            return self.id
        return f"{self.id}[{workload}, {mode}]" if self.per_workload else f"{self.id}[{mode}]"

    @property
    def page(self) -> str:
        return TRACK_PAGES[self.track]


@dataclass(frozen=True)
class ClaimFile:
    bootstrap: dict[str, Any]
    headline: dict[str, Any]
    claims: list[Claim]


def load_claims(path: str | Path) -> ClaimFile:
    """Parse and validate the claim file; an error names the claim and key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"claim file not found: {path}") from None
    schema = yaml.safe_load(SCHEMA.read_text())
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path)
    )
    if errors:
        lines = "\n".join(
            f"  - {'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in errors
        )
        raise ConfigError(f"invalid claim file ({path}):\n{lines}")
    ids = [c["id"] for c in data["claims"]]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"invalid claim file ({path}): duplicate claim ids {dupes}")
    claims = [
        Claim(
            c["id"],
            c["statement"],
            c["track"],
            c["evidence"],
            c["rule"],
            c["note"]["verdict"],
            c["note"]["says"],
            tuple(c.get("caveats") or ()),
            c.get("by_construction"),
            bool(c.get("per_mode", False)),
            bool(c.get("per_workload", False)),
            c.get("glance"),
            c["note"].get("number"),
        )
        for c in data["claims"]
    ]
    return ClaimFile(data["bootstrap"], data["headline"], claims)


def query_modes(config: dict) -> list[str]:
    """The tiered query modes the run measures (the per-mode claims get one verdict each)."""
    return list((config.get("tiered") or {}).get("query_modes") or [])


def workloads(config: dict) -> list[str]:
    """The prompt families the run measures; the first is the primary one."""
    return list((config.get("prompts") or {}).get("workloads") or ["needle"])


def ledger_rows(spec: ClaimFile, config: dict) -> list[tuple[Claim, str | None, str | None]]:
    """The ledger's rows in order, as (claim, family, mode): each claim once, a per-mode claim once
    per mode on the primary family, a per-workload claim once per (family, mode)."""
    modes, families = query_modes(config), workloads(config)
    out: list[tuple[Claim, str | None, str | None]] = []
    for c in spec.claims:
        if c.per_workload:
            out += [(c, w, m) for w in families for m in modes]
        elif c.per_mode:
            out += [(c, families[0], m) for m in modes]
        else:
            out.append((c, None, None))
    return out


def eval_context(
    spec: ClaimFile, results: Results, config: dict, workload: str | None = None, mode: str | None = None
) -> EvalContext:
    """What the rules read; with ``workload`` and ``mode``, the dense and tiered tables cut to them."""
    if mode is not None:
        results = results.view(workload or workloads(config)[0], mode)
    dense = results["dense"].df
    tiered = tables.tiered_rows(results["tiered_promotion"].df, dense)
    return EvalContext(
        results=results,
        config=config,
        bootstrap=spec.bootstrap,
        exclude=headline_exclude(spec, config),
        tiered=tiered,
        promotion_contexts=promotion_contexts(config),
        headline=headline_of(spec, config, results["tiered_promotion"].df),
        query_mode=mode,
    )


def headline_exclude(spec: ClaimFile, config: dict) -> list[str]:
    """Settings never chosen as the headline (:func:`bcr.headline.excluded`)."""
    return headline.excluded(spec.headline, config)


def headline_of(spec: ClaimFile, config: dict, promotion: pd.DataFrame | None) -> headline.Headline:
    """The setting the tiered claims are about, from one family's and mode's promotion rows
    (:func:`bcr.headline.choose`, the choice the timed promotion runs also make)."""
    return headline.choose(spec.headline, config, promotion)


def evaluate(spec: ClaimFile, results: Results, config: dict) -> pd.DataFrame:
    """One row per claim (per family and mode where the claim says), in claim-file order: the
    verdict and the numbers that decided it."""
    contexts: dict[tuple[str | None, str | None], EvalContext] = {}
    rows = []
    for claim, workload, mode in ledger_rows(spec, config):
        if (workload, mode) not in contexts:
            contexts[workload, mode] = eval_context(spec, results, config, workload, mode)
        ctx = contexts[workload, mode]
        out = RULES[claim.rule["kind"]](claim.rule, ctx)
        if out.verdict not in VERDICTS:
            raise AssertionError(f"{claim.id}: rule returned verdict {out.verdict!r}")
        rows.append(
            {
                "claim_id": claim.row_id(workload, mode),
                "claim": claim.id,
                "workload": workload,
                "query_mode": mode,
                "statement": claim.statement,
                "verdict": out.verdict,
                "note_verdict": claim.note_verdict,
                "evidence": out.evidence,
                "n": int(out.n),
                "value": _float(out.value),
                "threshold": _float(out.threshold),
                "reason": out.reason,
                "track": claim.track,
                "ci_low": _float(out.ci_low),
                "ci_high": _float(out.ci_high),
                "value_text": out.value_text,
                "note_says": claim.note_says,
                "by_construction": claim.by_construction,
            }
        )
    df = pd.DataFrame(rows, columns=LEDGER_COLUMNS + EXTRA_COLUMNS)
    df["n"] = df["n"].astype("int64")
    for c in ("value", "threshold", "ci_low", "ci_high"):
        df[c] = df[c].astype("float64")
    return df


def _float(v: float | None) -> float:
    return math.nan if v is None else float(v)


def ledger_with_provenance(ledger: pd.DataFrame, config: dict) -> pd.DataFrame:
    """The ledger rows with the provenance columns every result file carries (evaluated on the CPU)."""
    return provenance.attach(ledger, provenance.provenance(config, "cpu"))
