"""Fixtures for the ledger/site tests: the claim file, the CPU config, synthetic results, built sites."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import ledger_synth as synth
import pandas as pd
import pytest
import yaml
from ledger_synth import REPO, build_site

from bcr import config as cfgmod
from bcr.ledger.claims import ClaimFile, evaluate, load_claims
from bcr.ledger.evidence import load_results


@pytest.fixture(scope="session")
def spec() -> ClaimFile:
    return load_claims(REPO / "config" / "claims.yaml")


@pytest.fixture(scope="session")
def reference() -> dict:
    return yaml.safe_load((REPO / "config" / "reference.yaml").read_text())


@pytest.fixture(scope="session")
def _cpu_config() -> dict:
    return cfgmod.load(REPO / "config" / "config.yaml")


@pytest.fixture
def cpu_config(_cpu_config) -> dict:
    return copy.deepcopy(_cpu_config)


@pytest.fixture
def results_dir(tmp_path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def verdicts(spec, cpu_config) -> Callable[[Path], dict[str, pd.Series]]:
    """Evaluate the real claim file on a results folder; ledger row id -> its row, and a per-mode
    claim's plain id -> its first mode's row (question_aware: the study's protocol)."""

    def run(root: Path) -> dict[str, pd.Series]:
        ledger = evaluate(spec, load_results(root), cpu_config)
        out = {r["claim_id"]: r for _, r in ledger.iterrows()}
        for _, r in ledger.iterrows():
            out.setdefault(r["claim"], r)
        return out

    return run


@pytest.fixture(scope="session")
def full_site(tmp_path_factory, spec, _cpu_config, reference) -> Path:
    """A site built from every evidence file (the future tracks' included); returns results/."""
    root = tmp_path_factory.mktemp("full") / "results"
    synth.write_full(root)
    build_site(root, spec, _cpu_config, reference)
    return root
