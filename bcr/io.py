"""Atomic result files: write to a temporary sibling, fsync, rename.

An interrupted job therefore leaves either the previous file or none, never half a Parquet file,
and Snakemake's ``--rerun-incomplete`` redoes exactly the jobs that did not finish.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported where a frame is read or written (the CLI imports this module)
    import pandas as pd


class BadFileError(ValueError):
    """A file a command reads exists but is not what it must be (not Parquet, not JSON, ...): the
    message names the file and what is wrong, for the CLI to print instead of a traceback."""


class ResultSchemaError(BadFileError):
    """A result file lacks columns its reader relies on."""


def _existing(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such {what} file" + (" (a directory)" if p.is_dir() else ""))
    return p


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def read_parquet(
    path: str | os.PathLike, required: Iterable[str] = (), columns: list[str] | None = None
) -> pd.DataFrame:
    """A Parquet file, with its ``required`` columns checked; any failure names the file."""
    import pandas as pd
    import pyarrow as pa

    p = _existing(path, "Parquet")
    try:
        df = pd.read_parquet(p, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as exc:
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BadFileError(f"{p}: not a readable Parquet file ({why})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ResultSchemaError(f"{p}: missing columns {missing}")
    return df


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file; a missing or malformed one names the file and where it breaks."""
    p = _existing(path, "JSON")
    try:
        return json.loads(p.read_text())
    except UnicodeDecodeError:
        raise BadFileError(f"{p}: not a JSON file (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise BadFileError(
            f"{p}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None


def write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
