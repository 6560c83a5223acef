"""Fixtures of the tiered tests that run the committed tiny model."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from bcr import config as cfgmod
from bcr.models import load_model
from bcr.prompts import synthetic_prompt_set
from bcr.training import needle_spec


@pytest.fixture(scope="module")
def setup(repo):
    """(default config, the loaded tiny model, prompts(context, n) -> the needle prompt set)."""
    config = cfgmod.load(repo / "config" / "config.yaml")
    torch.set_num_threads(config["runtime"]["threads"])
    loaded = load_model(config["model"], torch.device("cpu"), root=repo)
    spec = needle_spec(config["prompts"], config["model"]["architecture"])

    def prompts(context: int, n: int = 2) -> pd.DataFrame:
        return synthetic_prompt_set(context, n, config["prompts"]["seed"], spec)

    return config, loaded, prompts
