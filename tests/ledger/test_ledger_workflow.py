"""The site rules' inputs follow whatever tracks the DAG includes, and the site rules come last."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import ledger_synth as synth

from bcr.ledger import workflow


class FakeTiered:
    @staticmethod
    def promotion_files(promoted, contexts):
        return [f"results/tiered/promotion/{c}/front_ret25.parquet" for c in contexts]


def _checkpoints():
    promote = SimpleNamespace(
        get=lambda: SimpleNamespace(output=SimpleNamespace(promoted="results/tiered/promoted.json"))
    )
    return SimpleNamespace(tiered_promote=promote)


def test_base_inputs_only_without_other_tracks():
    ns = {"CONTEXTS": [2048, 4096]}
    assert workflow.site_inputs(ns, None) == [
        "results/model/card.json",
        "results/model/accuracy.parquet",
        "results/dense/2048.parquet",
        "results/dense/4096.parquet",
    ]


def test_tracks_contribute_lists_and_functions():
    ns = {
        "CONTEXTS": [2048],
        "TIERED_PROMOTED": "results/tiered/promoted.json",
        "TIERED_SWEEP": ["middle", "front_ret25"],
        "TIERED_PROMOTION_CONTEXTS": [4096, 8192],
        "tiered_workflow": FakeTiered,
        "checkpoints": _checkpoints(),
        "SERVING_SITE_INPUTS": ["results/serving/cache_ops.parquet"],
        "PEERS_SITE_INPUTS": lambda w: ["results/peers/kvpress.parquet", "results/dense/2048.parquet"],
    }
    files = workflow.site_inputs(ns, None)
    assert "results/serving/cache_ops.parquet" in files
    assert "results/peers/kvpress.parquet" in files
    assert "results/tiered/sweep/front_ret25.parquet" in files
    assert "results/tiered/promotion/8192/front_ret25.parquet" in files
    assert "results/tiered/promoted.json" in files
    assert len(files) == len(set(files))  # the dense file both lists name appears once


def _snakemake(tmp_path, *args: str) -> str:
    """Snakemake on the default config with a scratch working directory (nothing written in the repo)."""
    cmd = [sys.executable, "-m", "snakemake", "--forceall", *args]
    cmd += [
        "--snakefile",
        str(synth.REPO / "Snakefile"),
        "--configfile",
        str(synth.REPO / "config" / "config.yaml"),
    ]
    cmd += ["-d", str(tmp_path)]
    return subprocess.run(cmd, cwd=synth.REPO, capture_output=True, text=True, check=True).stdout


def test_site_rules_are_the_last_rules_of_the_dag(tmp_path):
    """Nothing but `all` runs after build_site; build_site needs the ledger and every static result file."""
    dag = _snakemake(tmp_path, "--rulegraph")
    labels = dict(
        (line.split("[")[0].strip(), line.split('label = "')[1].split('"')[0])
        for line in dag.splitlines()
        if 'label = "' in line
    )
    edges = [
        tuple(p.strip().rstrip(";") for p in line.split("->")) for line in dag.splitlines() if "->" in line
    ]
    named = {(labels[a], labels[b]) for a, b in edges}
    assert ("evaluate_claims", "build_site") in named
    assert {b for a, b in named if a == "build_site"} == {"all"}
    ancestors, frontier = set(), {"build_site"}
    while frontier:
        frontier = {a for a, b in named if b in frontier} - ancestors
        ancestors |= frontier
    assert {"model_card", "dense_baseline", "tiered_promote"} <= ancestors
    # the site is the last rule: every other rule of the DAG runs before it
    assert set(labels.values()) - {"all", "build_site"} <= ancestors
