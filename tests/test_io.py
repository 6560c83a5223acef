"""Atomic writes: an interrupted write leaves the previous file (or none), never half a file."""

from __future__ import annotations

import pandas as pd
import pytest

from bcr import io


def test_write_then_read_roundtrip(tmp_path):
    df = pd.DataFrame({"a": [1, 2], "b": [[1, 2], [3]]})
    path = io.write_parquet(df, tmp_path / "sub" / "x.parquet")
    back = io.read_parquet(path, required=["a", "b"])
    assert back["a"].tolist() == [1, 2]
    with pytest.raises(io.ResultSchemaError, match="missing columns"):
        io.read_parquet(path, required=["a", "nope"])


def test_interrupted_write_keeps_previous_file(tmp_path):
    path = tmp_path / "x.parquet"
    io.write_parquet(pd.DataFrame({"a": [1]}), path)
    with pytest.raises(KeyboardInterrupt), io.atomic_path(path) as tmp:
        tmp.write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt
    assert io.read_parquet(path)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


def test_interrupted_first_write_leaves_nothing(tmp_path):
    path = tmp_path / "y.json"
    with pytest.raises(RuntimeError), io.atomic_path(path) as tmp:
        tmp.write_text("{")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
