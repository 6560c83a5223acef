"""Helpers the tiered Snakemake rules call (kept here so the rule file holds rules only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bcr import config as cfgmod
from bcr.contracts import TIERED_PROMOTION, TIERED_SWEEP
from bcr.tiered import settings as ts


def run_hash(config: dict, setting: str) -> str:
    """A run reruns when its own resolved setting, the decode paths or the shared sections change."""
    shared = {k: config["tiered"].get(k) for k in ("decode_paths", "n_prompts", "repeats")}
    return cfgmod.config_hash(
        {
            "setting": ts.resolve(config, setting).as_dict(),
            "tiered": shared,
            **{k: config.get(k) for k in ("runtime", "model", "generation")},
        }
    )


def promotion_files(promoted_json: str | Path, contexts: list[int]) -> list[str]:
    """The promotion results the checkpoint's ``promoted.json`` asks for (its ``run`` list x contexts)."""
    run = json.loads(Path(promoted_json).read_text())["run"]
    return [TIERED_PROMOTION.path(context=c, setting=s) for c in contexts for s in run]


def run_files(config: dict, promoted_json: str | Path) -> list[str]:
    """Every per-prompt tiered result of the run: the sweep's and the promotions the checkpoint asked for."""
    return [
        *(TIERED_SWEEP.path(setting=s) for s in ts.sweep_settings(config)),
        *promotion_files(promoted_json, ts.promotion_contexts(config)),
    ]


def checkpoint_results(checkpoint: Any, config: dict) -> list[str]:
    """``promoted.json`` and the tiered runs it implies; asking the checkpoint makes Snakemake
    re-evaluate this input after the sweep has run."""
    promoted = checkpoint.get().output.promoted
    return [promoted, *run_files(config, promoted)]
