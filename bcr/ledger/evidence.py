"""Read the result files the ledger and the pages use, by their column contracts.

A file that does not exist is not an error here: it becomes a :class:`Table` with no frame and a
reason ("results/peers/kvpress.parquet: not produced by this run"), which the ledger turns into a
``not yet`` verdict.  A file that exists but breaks its contract (missing columns) *is* an error:
the track that wrote it has a bug, and a verdict computed from it would be meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from bcr import contracts as C
from bcr import io
from bcr.contracts import PROVENANCE_COLUMNS, TIERED_COLUMNS

# The columns the ledger and the pages read from each file (a file may hold more).
LEDGER_DENSE_COLUMNS = [
    "prompt_id",
    C.WORKLOAD,
    "context",
    "answer_correct",
    "ttft_s",
    "tpot_s",
    "kv_bytes",
    "peak_mem_bytes",
]
LEDGER_CACHE_OPS_COLUMNS = [
    "arm",
    C.WORKLOAD,
    "page_size",
    "op",
    "n",
    "us_p50",
    "us_p50_lo",
    "us_p50_hi",
    "us_p99",
]
# The tables with a query_mode column (one file family per mode).
TIERED_TABLES = ("tiered_sweep", "tiered_promotion", "tiered_controls")
__all__ = ["TIERED_COLUMNS", "Results", "Table", "load_results", "provenance_rows"]


@dataclass
class Table:
    """One evidence table: its frame (``None`` when missing), the files read, and why it is missing."""

    name: str
    pattern: str
    df: pd.DataFrame | None = None
    files: list[Path] = field(default_factory=list)
    reason: str = ""
    contract: C.ResultFile | None = None  # what the file is and which rule writes it

    @property
    def present(self) -> bool:
        return self.df is not None and len(self.df) > 0


@dataclass
class Results:
    """Everything under ``results/`` the site reads; each table may be missing."""

    root: Path
    card: dict[str, Any] | None  # the primary model's card
    promoted: dict[tuple[str, str], Any]  # (workload, query mode) -> that checkpoint's promoted.json
    tables: dict[str, Table]
    provenance: pd.DataFrame | None = None  # filled on first use by provenance_rows()
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)  # every model's card, by name

    def __getitem__(self, name: str) -> Table:
        return self.tables[name]

    def view(self, workload: str, mode: str) -> Results:
        """The same results with the dense and tiered tables cut to one prompt family and query
        mode (what a per-mode or per-workload claim and a site section read)."""
        tables = dict(self.tables)
        for name in (*TIERED_TABLES, "dense"):
            t = tables.get(name)
            if t is None or t.df is None:
                continue
            keep = t.df[C.WORKLOAD] == workload
            if name != "dense":
                keep &= t.df[C.QUERY_MODE] == mode
            df = t.df[keep].reset_index(drop=True)
            files = [
                f
                for f in t.files
                if workload in f.parts and (name == "dense" or mode in f.parts or f.stem == mode)
            ]
            what = workload if name == "dense" else f"{workload} {mode}"
            reason = t.reason or ("" if len(df) else f"`{t.pattern}` has no {what} rows")
            tables[name] = replace(t, df=df, files=files, reason=reason)
        peers = tables.get("peers")
        if peers is not None and peers.df is not None:
            df = peers.df[(peers.df[C.WORKLOAD] == workload) & (peers.df[C.QUERY_MODE] == mode)]
            tables["peers"] = replace(peers, df=df.reset_index(drop=True))
        key = (workload, mode)
        return replace(
            self,
            promoted={key: self.promoted[key]} if key in self.promoted else {},
            tables=tables,
            provenance=None,
        )

    @property
    def promoted_json(self) -> dict[str, Any] | None:
        """The one checkpoint's promoted.json of a :meth:`view` (None: several or none)."""
        return next(iter(self.promoted.values())) if len(self.promoted) == 1 else None

    def rel(self, path: Path) -> str:
        """``path`` as the pages show it: relative to the results folder's parent, e.g. ``results/x``."""
        try:
            return str(path.relative_to(self.root.parent))
        except ValueError:
            return str(path)


def _concat(files: list[Path], required: list[str], extra: dict[Path, dict] | None = None) -> pd.DataFrame:
    frames = []
    for f in files:
        df = io.read_parquet(f, required)
        for col, value in (extra or {}).get(f, {}).items():
            if col not in df.columns:
                df[col] = value
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=required)


def _table(root: Path, name: str, spec: C.ResultFile, required: list[str] | None = None, **kw: Any) -> Table:
    pattern = spec.glob
    required = list(spec.columns) if required is None else required
    files = sorted(root.glob(pattern))
    table = Table(name=name, pattern=f"{root.name}/{pattern}", files=files, contract=spec)
    if not files:
        table.reason = f"`{table.pattern}` not produced by this run"
        return table
    table.df = _concat(files, required, kw.get("extra"))
    if len(table.df) == 0:
        table.reason = f"`{table.pattern}` has no rows"
    return table


def _serving(root: Path) -> Table:
    """``serving/{engine}/{workload}/{arm}.parquet``: engine, workload and arm come from the path."""
    files = sorted(root.glob(C.SERVING_REQUESTS.glob))
    extra = {f: {"engine": f.parent.parent.name, C.WORKLOAD: f.parent.name, "arm": f.stem} for f in files}
    return _table(root, "serving_requests", C.SERVING_REQUESTS, extra=extra)


def load_results(root: str | Path, primary: str | None = None) -> Results:
    """Every result table under ``root``; ``card`` is the ``primary`` model's card (None: the only
    card there is, if there is one)."""
    root = Path(root)
    cards = {p.parent.name: io.read_json(p) for p in sorted(root.glob(C.MODEL_CARD.glob))}
    if primary is None and len(cards) == 1:
        primary = next(iter(cards))
    tables = [
        _table(root, "model_accuracy", C.MODEL_ACCURACY, ["context", "n", "accuracy"]),
        _table(root, "dense", C.DENSE, LEDGER_DENSE_COLUMNS),
        _table(root, "tiered_sweep", C.TIERED_SWEEP),
        _table(root, "tiered_promotion", C.TIERED_PROMOTION),
        _table(root, "tiered_controls", C.TIERED_CONTROLS),
        _table(root, "tiered_frontier", C.TIERED_FRONTIER),
        _table(root, "tiered_decomposition", C.TIERED_DECOMPOSITION),
        _table(root, "cache_ops", C.CACHE_OPS, LEDGER_CACHE_OPS_COLUMNS),
        _serving(root),
        _table(root, "serving_summary", C.SERVING_SUMMARY),
        _table(root, "longctx", C.LONGCTX),
        _table(root, "peers", C.PEERS),
    ]
    return Results(
        root=root,
        card=cards.get(primary) if primary else None,
        cards=cards,
        promoted={
            (p.parent.parent.name, p.stem): io.read_json(p)
            for p in sorted(root.glob(C.TIERED_PROMOTED.glob))
            if p.stem in C.QUERY_MODES and p.parent.parent.name in C.PROMPT_WORKLOADS
        },
        tables={t.name: t for t in tables},
    )


def provenance_rows(results: Results) -> pd.DataFrame:
    """One row per result file: which run, commit, config, device and versions produced it."""
    if results.provenance is None:
        results.provenance = _provenance_rows(results)
    return results.provenance


def _provenance_rows(results: Results) -> pd.DataFrame:
    rows = []
    for table in results.tables.values():
        for f in table.files:
            df = pd.read_parquet(f, columns=[c for c in PROVENANCE_COLUMNS if c in _columns(f)])
            row: dict[str, Any] = {"file": results.rel(f), "rows": _num_rows(f)}
            for col in PROVENANCE_COLUMNS:
                vals = df[col].dropna().unique() if col in df.columns else []
                row[col] = ", ".join(sorted(map(str, vals))) if len(vals) else None
            rows.append(row)
    return pd.DataFrame(rows, columns=["file", "rows", *PROVENANCE_COLUMNS])


def _columns(path: Path) -> list[str]:
    return pq.read_schema(path).names


def _num_rows(path: Path) -> int:
    return pq.read_metadata(path).num_rows
