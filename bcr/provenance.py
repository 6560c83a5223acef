"""Provenance columns carried by every result row: which run, config, code, model, device, versions."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from bcr import io
from bcr.config import config_hash
from bcr.contracts import PROVENANCE_COLUMNS

if TYPE_CHECKING:
    import torch


REPO_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def git_commit() -> str:
    """HEAD of the checkout the code runs from, with ``+dirty`` if tracked files differ; ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_version() -> str | None:
    """torch's full version (with its build tag, e.g. ``+cu130``) without importing torch.

    The ledger and site commands record provenance too, and importing torch would load the whole
    model stack into them; ``torch/version.py`` holds the same string ``torch.__version__`` reports.
    """
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    spec = importlib.util.find_spec("torch")
    if spec and spec.submodule_search_locations:
        version_py = Path(spec.submodule_search_locations[0]) / "version.py"
        m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", version_py.read_text(), re.M)
        if m:
            return m.group(1)
    return package_version("torch")


def device_label(device: torch.device | str, threads: int | None = None) -> str:
    kind = device if isinstance(device, str) else device.type
    if kind == "cuda":
        import torch

        return f"cuda:{torch.cuda.get_device_name(device)}"
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return f"cpu:{platform.machine()}x{threads}threads"


def run_id(config: dict) -> str:
    """Stable across the rules of one run (each rule is its own process, maybe on another node)."""
    return f"{config['run_name']}-{git_commit()[:8]}-{config_hash(config)[:8]}"


def provenance(config: dict, device: torch.device | str) -> dict[str, str | None]:
    return {
        "run_id": run_id(config),
        "config_hash": config_hash(config),
        "git_commit": git_commit(),
        "model": config["model"].get("hub_id") or config["model"]["name"],
        "device": device_label(device, config["runtime"].get("threads")),
        "torch": torch_version(),
        "transformers": package_version("transformers"),
        "sglang": package_version("sglang"),
    }


def attach(df: pd.DataFrame, prov: dict) -> pd.DataFrame:
    """Return ``df`` with the provenance columns appended (same value on every row)."""
    out = df.copy()
    for k in PROVENANCE_COLUMNS:
        out[k] = pd.Series([prov[k]] * len(out), index=out.index, dtype="string")
    return out


def write_rows(
    df: pd.DataFrame,
    path: str | Path,
    config: dict,
    device: torch.device | str,
    measured_on: str | None = None,
) -> dict[str, str | None]:
    """Write result rows atomically with the provenance of the run; returns that provenance.

    ``measured_on`` replaces the device column for a table computed from rows measured elsewhere (a
    summary job may run on a CPU node of the cluster while its rows were measured on a GPU).
    """
    prov = provenance(config, device)
    if measured_on:
        prov["device"] = measured_on
    io.write_parquet(attach(df, prov), path)
    return prov
