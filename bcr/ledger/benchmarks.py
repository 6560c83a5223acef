"""What each stage of a run cost: Snakemake's ``benchmark:`` files (one per job) in one table, and
the per-stage sums and slowest jobs the provenance page shows, so a regression is visible in the
next run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bcr import contracts as C


def gather(results: Path) -> pd.DataFrame:
    """Every ``results/run/benchmarks/{rule}/{job}.tsv`` as one row (a job benchmarked several times,
    ``--benchmark-repeats``: its mean)."""
    root = results / Path(C.BENCHMARK.pattern).parts[0] / Path(C.BENCHMARK.pattern).parts[1]
    rows = []
    for tsv in sorted(root.rglob("*.tsv")):
        rel = tsv.relative_to(root).with_suffix("")
        try:
            df = pd.read_csv(tsv, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ValueError(f"{tsv}: not a Snakemake benchmark file ({exc})") from None
        means = df.mean(numeric_only=True)
        rows.append(
            {
                "rule": rel.parts[0],
                "job": "/".join(rel.parts[1:]),
                **{c: float(means[c]) if c in means else None for c in C.BENCHMARK_COLUMNS[2:]},
            }
        )
    return pd.DataFrame(rows, columns=C.BENCHMARK_COLUMNS)


def stages(bench: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, wall seconds summed and the longest job, CPU seconds, the largest max RSS (MB);
    the costliest stage first."""
    if bench.empty:
        return pd.DataFrame(columns=["rule", "jobs", "s", "s_max", "cpu_time", "max_rss"])
    g = bench.groupby("rule")
    out = pd.DataFrame(
        {
            "jobs": g.size(),
            "s": g["s"].sum(),
            "s_max": g["s"].max(),
            "cpu_time": g["cpu_time"].sum(),
            "max_rss": g["max_rss"].max(),
        }
    ).reset_index()
    return out.sort_values(["s", "rule"], ascending=[False, True]).reset_index(drop=True)


def slowest(bench: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    return (
        bench.sort_values(["s", "rule", "job"], ascending=[False, True, True]).head(n).reset_index(drop=True)
    )
