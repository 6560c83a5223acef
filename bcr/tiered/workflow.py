"""Helpers the tiered Snakemake rules call (kept here so the rule file holds rules only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bcr import config as cfgmod
from bcr.contracts import TIERED_PROMOTION, TIERED_PROMOTION_DECOMPOSITION, TIERED_SWEEP
from bcr.tiered import settings as ts

# The tiered keys every tiered run reads besides its settings.
_SHARED = ("decode_paths", "n_prompts", "repeats", "timed_prompts", "decomposition_prompts", "query_modes")


def _hash(config: dict, names: list[str]) -> str:
    return cfgmod.config_hash(
        {
            "settings": {n: ts.resolve(config, n).as_dict() for n in names},
            "tiered": {k: config["tiered"].get(k) for k in _SHARED},
            "negative_controls": config["tiered"].get("negative_controls"),
            **{k: config.get(k) for k in ("runtime", "model", "generation")},
        }
    )


def sweep_hash(config: dict) -> str:
    """The sweep reruns when a sweep setting's resolved knobs, the shared keys or sections change."""
    return _hash(config, ts.sweep_settings(config))


def run_hash(config: dict) -> str:
    """A promotion or control run reruns when any setting it could be asked to run changes (which
    ones it runs is promoted.json's, an input), or the shared keys and sections."""
    return _hash(config, sorted(config["tiered"]["settings"]))


def promotion_files(promoted_json: str | Path, workload: str, mode: str, contexts: list[int]) -> list[str]:
    """One (family, mode)'s promotion results: one file per promotion context, none when nothing runs."""
    run = json.loads(Path(promoted_json).read_text())["run"]
    return [TIERED_PROMOTION.path(workload=workload, mode=mode, context=c) for c in contexts] if run else []


def checkpoint_results(checkpoint: Any, config: dict) -> list[str]:
    """Every (family, mode)'s ``promoted.json``, sweep file and the promotion runs it implies; asking
    the checkpoint makes Snakemake re-evaluate this input after the sweeps have run."""
    out = []
    for workload in config["prompts"]["workloads"]:
        for mode in config["tiered"]["query_modes"]:
            promoted = checkpoint.get(workload=workload, mode=mode).output.promoted
            out += [promoted, TIERED_SWEEP.path(workload=workload, mode=mode)]
            out += promotion_files(promoted, workload, mode, ts.promotion_contexts(config))
    return out


def decomposition_files(checkpoint: Any, config: dict, workload: str) -> list[str]:
    """The timed family's per-run decompositions: one per timed promotion run its checkpoints imply."""
    out = []
    for mode in config["tiered"]["query_modes"]:
        promoted = checkpoint.get(workload=workload, mode=mode).output.promoted
        if json.loads(Path(promoted).read_text())["run"]:
            out += [
                TIERED_PROMOTION_DECOMPOSITION.path(workload=workload, mode=mode, context=c)
                for c in ts.timed_contexts(config)
            ]
    return out
