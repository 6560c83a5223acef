"""The site rules come last: they need every result file the other rules write."""

from __future__ import annotations

import subprocess
import sys

import ledger_synth as synth


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
