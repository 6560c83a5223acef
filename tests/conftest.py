"""Shared fixtures: the repository root, the default config, a random-weight tiny model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from bcr import config as cfgmod
from bcr.models import build_tiny_model

REPO = Path(__file__).resolve().parent.parent


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
    torch.set_num_threads(2)
    model = build_tiny_model(tiny_arch, seed=0)
    model.eval()
    return model
