"""The site rules' inputs: every result file of this config's DAG that the ledger and pages read.

Kept out of the rule file (Snakemake's linter wants rules and functions apart).  The rule file
passes its global namespace, so a track contributes its files by defining one of
:data:`TRACK_INPUTS` there — a list of paths or a function ``wildcards -> paths`` — and a track whose
rules are not included contributes nothing (its claims then show ``not yet``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TRACK_INPUTS = (
    "TIERED_SITE_INPUTS",
    "SERVING_SITE_INPUTS",
    "CORRECTNESS_SITE_INPUTS",
    "PEERS_SITE_INPUTS",
)


def base_inputs(contexts: list[int]) -> list[str]:
    """Model card, accuracy and the dense baseline: produced by every configuration."""
    return [
        "results/model/card.json",
        "results/model/accuracy.parquet",
        *(f"results/dense/{c}.parquet" for c in contexts),
    ]


def tiered_inputs(ns: Mapping[str, Any], wildcards: Any) -> list[str]:
    """Sweep runs, ``promoted.json`` and the promotion runs it asked for (names tiered.smk defines).

    Asking the checkpoint for its output makes Snakemake re-evaluate this after the sweep has run.
    """
    if "TIERED_PROMOTED" not in ns:
        return []
    promoted = ns["checkpoints"].tiered_promote.get().output.promoted
    return [
        *(f"results/tiered/sweep/{s}.parquet" for s in ns["TIERED_SWEEP"]),
        promoted,
        *ns["tiered_workflow"].promotion_files(promoted, ns["TIERED_PROMOTION_CONTEXTS"]),
    ]


def static_inputs(ns: Mapping[str, Any]) -> list[str]:
    """Files known when the workflow is parsed: the base files and the tracks' path lists."""
    files = base_inputs(ns["CONTEXTS"])
    # The tiered summaries are not read (per-prompt rows are the source of truth), but depending on
    # them keeps the site the last rule of the DAG.
    files.extend(ns[name] for name in ("TIERED_SWEEP_SUMMARY", "TIERED_PROMOTION_SUMMARY") if name in ns)
    for name in TRACK_INPUTS:
        item = ns.get(name)
        if item is not None and not callable(item):
            files.extend(item)
    return list(dict.fromkeys(files))


def dynamic_inputs(ns: Mapping[str, Any], wildcards: Any) -> list[str]:
    """Files known only after a checkpoint: the tracks' input functions (and the tiered runs)."""
    files: list[str] = []
    funcs = [ns.get(name) for name in TRACK_INPUTS if callable(ns.get(name))]
    if ns.get("TIERED_SITE_INPUTS") is None:
        funcs.append(lambda w: tiered_inputs(ns, w))
    for func in funcs:
        files.extend(func(wildcards))
    return list(dict.fromkeys(files))


def site_inputs(ns: Mapping[str, Any], wildcards: Any) -> list[str]:
    """All result files for the ledger and the site, without duplicates, in a stable order."""
    return list(dict.fromkeys([*static_inputs(ns), *dynamic_inputs(ns, wildcards)]))
