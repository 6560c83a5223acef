"""The mike version name of a results run: one version per run, ``{run_name}-{short commit}``."""

from __future__ import annotations

import re

import pandas as pd


def site_version(run_name: str, commit: str) -> str:
    """``{run_name}-{short commit}``, with ``-dirty`` when the run's tree had uncommitted changes."""
    short = commit.split("+")[0][:8] or "unknown"
    version = f"{run_name}-{short}" + ("-dirty" if commit.endswith("+dirty") else "")
    return re.sub(r"[^A-Za-z0-9._-]", "-", version)


def ledger_version(ledger: pd.DataFrame, config: dict) -> str:
    """The version of the run whose ledger this is (its provenance commit; ``unknown`` without one)."""
    has = "git_commit" in ledger.columns and len(ledger) and not pd.isna(ledger["git_commit"].iloc[0])
    return site_version(config["run_name"], str(ledger["git_commit"].iloc[0]) if has else "unknown")
