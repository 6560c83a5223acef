"""Shared fixtures: the repository root, the default config, a random-weight tiny model."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from bcr import config as cfgmod
from bcr.models import build_tiny_model

REPO = Path(__file__).resolve().parent.parent
# `make test` runs two pytest-xdist workers on the two cores: one torch thread each.
TORCH_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(TORCH_THREADS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest tests (marked ``workflow``: whole snakemake runs) first, so the other worker
    works through the short ones beside them instead of one long test ending the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("workflow") is None)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def default_config() -> dict:
    return copy.deepcopy(cfgmod.load(REPO / "config" / "config.yaml"))


@pytest.fixture(scope="session")
def tiny_arch() -> dict:
    return cfgmod.load(REPO / "config" / "config.yaml")["model"]["architecture"]


@pytest.fixture(scope="session")
def random_tiny_model(tiny_arch):
    torch.set_num_threads(TORCH_THREADS)
    model = build_tiny_model(tiny_arch, seed=0)
    model.eval()
    return model
