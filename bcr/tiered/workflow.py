"""Helpers the tiered Snakemake rules call (kept here so the rule file holds rules only)."""

from __future__ import annotations

import json
from pathlib import Path

from bcr import config as cfgmod
from bcr.tiered import settings as ts

PROMOTION_PATTERN = "results/tiered/promotion/{context}/{setting}.parquet"


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
    return [PROMOTION_PATTERN.format(context=c, setting=s) for c in contexts for s in run]
