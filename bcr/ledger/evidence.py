"""Read the result files the ledger and the pages use, by their column contracts.

A file that does not exist is not an error here: it becomes a :class:`Table` with no frame and a
reason ("results/peers/kvpress.parquet: not produced by this run"), which the ledger turns into a
``not yet`` verdict.  A file that exists but breaks its contract (missing columns) *is* an error:
the track that wrote it has a bug, and a verdict computed from it would be meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from bcr import io
from bcr.provenance import PROVENANCE_COLUMNS
from bcr.tiered.sweep import METRIC_COLUMNS

TIERED_COLUMNS = METRIC_COLUMNS  # the tiered track's row contract, defined once
CACHE_OPS_COLUMNS = ["arm", "workload", "page_size", "op", "n", "us_p50", "us_p99"]
# Contracts this track assumes for files later issues will write (documented in site/methods.md).
SERVING_COLUMNS = ["ttft_s", "e2e_s", "cached_tokens"]
LONGCTX_COLUMNS = ["prompt_id", "exact"]
DECOMPOSITION_COLUMNS = ["setting", "context", "decode_path", "phase", "seconds"]
PEERS_COLUMNS = ["press", "context", "prompt_id", "stored_fraction", "exact"]
DENSE_COLUMNS = ["prompt_id", "context", "answer_correct", "ttft_s", "tpot_s", "kv_bytes", "peak_mem_bytes"]


@dataclass
class Table:
    """One evidence table: its frame (``None`` when missing), the files read, and why it is missing."""

    name: str
    pattern: str
    df: pd.DataFrame | None = None
    files: list[Path] = field(default_factory=list)
    reason: str = ""

    @property
    def present(self) -> bool:
        return self.df is not None and len(self.df) > 0


@dataclass
class Results:
    """Everything under ``results/`` the site reads; each table may be missing."""

    root: Path
    card: dict[str, Any] | None
    promoted: dict[str, Any] | None
    tables: dict[str, Table]
    provenance: pd.DataFrame | None = None  # filled on first use by provenance_rows()

    def __getitem__(self, name: str) -> Table:
        return self.tables[name]

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


def _table(root: Path, name: str, pattern: str, required: list[str], **kw: Any) -> Table:
    files = sorted(root.glob(pattern))
    table = Table(name=name, pattern=f"{root.name}/{pattern}", files=files)
    if not files:
        table.reason = f"`{table.pattern}` not produced by this run"
        return table
    table.df = _concat(files, required, kw.get("extra"))
    if len(table.df) == 0:
        table.reason = f"`{table.pattern}` has no rows"
    return table


def _serving(root: Path) -> Table:
    """``serving/{engine}/{workload}/{arm}.parquet``: engine, workload and arm come from the path."""
    pattern = "serving/*/*/*.parquet"
    files = sorted(root.glob(pattern))
    extra = {f: {"engine": f.parent.parent.name, "workload": f.parent.name, "arm": f.stem} for f in files}
    return _table(root, "serving_requests", pattern, SERVING_COLUMNS, extra=extra)


def _optional_json(path: Path) -> Any:
    return io.read_json(path) if path.is_file() else None


def load_results(root: str | Path) -> Results:
    root = Path(root)
    tables = [
        _table(root, "model_accuracy", "model/accuracy.parquet", ["context", "n", "accuracy"]),
        _table(root, "dense", "dense/*.parquet", DENSE_COLUMNS),
        _table(root, "tiered_sweep", "tiered/sweep/*.parquet", TIERED_COLUMNS),
        _table(root, "tiered_promotion", "tiered/promotion/*/*.parquet", TIERED_COLUMNS),
        _table(root, "tiered_decomposition", "tiered/decomposition.parquet", DECOMPOSITION_COLUMNS),
        _table(root, "cache_ops", "serving/cache_ops.parquet", CACHE_OPS_COLUMNS),
        _serving(root),
        _table(root, "longctx", "correctness/longctx.parquet", LONGCTX_COLUMNS),
        _table(root, "peers", "peers/kvpress.parquet", PEERS_COLUMNS),
    ]
    return Results(
        root=root,
        card=_optional_json(root / "model" / "card.json"),
        promoted=_optional_json(root / "tiered" / "promoted.json"),
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
