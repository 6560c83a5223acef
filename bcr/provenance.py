"""Provenance columns carried by every result row: which run, config, code, model, device, versions."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import pandas as pd
import torch

from bcr.config import config_hash

REPO_ROOT = Path(__file__).resolve().parent.parent
PROVENANCE_COLUMNS = [
    "run_id",
    "config_hash",
    "git_commit",
    "model",
    "device",
    "torch",
    "transformers",
    "sglang",
]


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


def device_label(device: torch.device, threads: int | None = None) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    threads = threads or torch.get_num_threads()
    return f"cpu:{platform.machine()}x{threads}threads"


def run_id(config: dict) -> str:
    """Stable across the rules of one run (each rule is its own process, maybe on another node)."""
    return f"{config['run_name']}-{git_commit()[:8]}-{config_hash(config)[:8]}"


def provenance(config: dict, device: torch.device) -> dict[str, str | None]:
    return {
        "run_id": run_id(config),
        "config_hash": config_hash(config),
        "git_commit": git_commit(),
        "model": config["model"].get("hub_id") or config["model"]["name"],
        "device": device_label(device, config["runtime"].get("threads")),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "sglang": package_version("sglang"),
    }


def attach(df: pd.DataFrame, prov: dict) -> pd.DataFrame:
    """Return ``df`` with the provenance columns appended (same value on every row)."""
    out = df.copy()
    for k in PROVENANCE_COLUMNS:
        out[k] = pd.Series([prov[k]] * len(out), index=out.index, dtype="string")
    return out
