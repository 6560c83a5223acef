"""Matplotlib SVG plots with deterministic bytes: the same data always gives the same file.

Why it matters: the site is versioned, and a plot that changes bytes on every build (a date in the
metadata, random clip-path ids, a system font picked by fontconfig) would make every version look
different.  So: the Agg backend, ``svg.hashsalt`` fixed, ``metadata={'Date': None}``, glyphs as
paths from matplotlib's bundled DejaVu Sans, and every style setting pinned here rather than read
from a user's matplotlibrc.
"""

from __future__ import annotations

import io as _io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd

from bcr import io

STYLE = {
    "svg.hashsalt": "bcr-ledger",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "path.simplify": False,
    "axes.prop_cycle": matplotlib.cycler(
        color=["#3f51b5", "#e91e63", "#009688", "#ff9800", "#795548", "#607d8b", "#9c27b0"]
    ),
}
METADATA = {"Date": None, "Creator": "bcr-memory ledger"}
PHASE_ORDER = ["forward", "summary", "view_rebuild", "decode_attention", "other"]


def svg_bytes(fig: plt.Figure) -> bytes:
    buf = _io.BytesIO()
    fig.savefig(buf, format="svg", metadata=METADATA, bbox_inches=None)
    plt.close(fig)
    return buf.getvalue()


def _save(fig: plt.Figure, path: Path) -> Path:
    data = svg_bytes(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def compression_vs_exactness(
    promotion: pd.DataFrame, sweep: pd.DataFrame, reference: dict, path: Path
) -> Path:
    """Per (setting, context): stored-token compression against the fraction of prompts exact.

    ``promotion`` and ``sweep`` are the derived tables of one decode path (the caller filters).
    Ours are filled markers, one colour per context; the note's promotion rows are hollow black
    markers labelled as the note's reference.
    """
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        frames = [f for f in (sweep, promotion) if len(f)]
        ours = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if len(ours):
            for context, g in ours.groupby("context", sort=True):
                frac = g["n_exact"] / g["n"]
                ax.scatter(g["compression"], frac, s=36, label=f"ours, context {context}", zorder=3)
            # one label per setting, at its largest context (labels of every context would overlap)
            last = ours.sort_values("context").groupby("setting").tail(1)
            for r in last.itertuples():
                ax.annotate(
                    r.setting,
                    (r.compression, r.n_exact / r.n),
                    textcoords="offset points",
                    xytext=(4, 5),
                    fontsize=7,
                )
        ref = reference.get("promotion", {}).get("rows", [])
        if ref:
            ax.scatter(
                [r["compression"] for r in ref],
                [r["exact"] / r["n"] for r in ref],
                s=48,
                facecolors="none",
                edgecolors="black",
                marker="D",
                label="note (reference; Qwen2.5-7B, 4 prompts)",
                zorder=2,
            )
        ax.set_xlabel("stored-token compression C (x)")
        ax.set_ylabel("fraction of prompts exact")
        ax.set_ylim(-0.05, 1.1)
        ax.set_xlim(left=0.9)
        ax.legend(loc="lower left", fontsize=7)
        ax.set_title("Compression vs exactness")
        fig.tight_layout()
        return _save(fig, path)


def cache_ops_bars(cache_ops: pd.DataFrame, page_size: int, path: Path) -> Path:
    """µs p50 per operation and arm, one panel per workload (log scale)."""
    df = cache_ops[cache_ops["page_size"] == page_size]
    workloads = sorted(df["workload"].unique())
    arms = sorted(df["arm"].unique(), key=lambda a: (a != "bcr", a))
    ops = sorted(df["op"].unique())
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1, max(1, len(workloads)), figsize=(3.2 * max(1, len(workloads)), 3.4), squeeze=False
        )
        width = 0.8 / max(1, len(arms))
        for ax, workload in zip(axes[0], workloads, strict=False):
            g = df[df["workload"] == workload].set_index(["op", "arm"])
            for i, arm in enumerate(arms):
                ys = [float(g.loc[(op, arm), "us_p50"]) if (op, arm) in g.index else math.nan for op in ops]
                ax.bar([k + i * width for k in range(len(ops))], ys, width=width, label=arm)
            ax.set_xticks([k + width * (len(arms) - 1) / 2 for k in range(len(ops))], ops)
            ax.set_yscale("log")
            ax.set_title(workload)
            ax.set_ylabel("µs per operation (p50)")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"Cache-operation cost, page size {page_size}")
        fig.tight_layout()
        return _save(fig, path)


def ttft_distributions(serving: pd.DataFrame, path: Path) -> Path:
    """Empirical CDF of per-request TTFT per arm, one panel per (engine, workload)."""
    groups = sorted(serving.groupby(["engine", "workload"]).groups)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1, max(1, len(groups)), figsize=(3.4 * max(1, len(groups)), 3.2), squeeze=False
        )
        for ax, (engine, workload) in zip(axes[0], groups, strict=False):
            g = serving[(serving["engine"] == engine) & (serving["workload"] == workload)]
            for arm, h in sorted(g.groupby("arm")):
                xs = sorted(pd.to_numeric(h["ttft_s"], errors="coerce").dropna() * 1000)
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.step(xs, ys, where="post", label=arm)
            ax.set_xscale("log")
            ax.set_xlabel("TTFT (ms)")
            ax.set_ylabel("fraction of requests")
            ax.set_title(f"{workload} ({engine})")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        return _save(fig, path)


def decomposition_bars(decomp: pd.DataFrame, path: Path) -> Path:
    """Stacked seconds per phase for each (setting, context, decode path): before/after page-native."""
    keys = sorted(decomp.groupby(["setting", "context", "decode_path"]).groups)
    phases = [p for p in PHASE_ORDER if p in set(decomp["phase"])] + sorted(
        set(decomp["phase"]) - set(PHASE_ORDER)
    )
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(keys) + 2), 3.6))
        bottoms = [0.0] * len(keys)
        for phase in phases:
            vals = []
            for k in keys:
                m = decomp[
                    (decomp["setting"] == k[0])
                    & (decomp["context"] == k[1])
                    & (decomp["decode_path"] == k[2])
                    & (decomp["phase"] == phase)
                ]["seconds"]
                vals.append(float(m.sum()) * 1000 if len(m) else 0.0)
            ax.bar(range(len(keys)), vals, bottom=bottoms, label=phase)
            bottoms = [b + v for b, v in zip(bottoms, vals, strict=True)]
        ax.set_xticks(range(len(keys)), [f"{s}\n{c} · {p}" for s, c, p in keys], fontsize=7)
        ax.set_ylabel("ms (mean per generation)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title("Latency decomposition")
        fig.tight_layout()
        return _save(fig, path)


def ratio_bars(promotion: pd.DataFrame, path: Path) -> Path:
    """TTFT and TPOT ratios (tiered/dense) per setting, context and decode path; 1.0 marked."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(promotion) + 2), 3.4))
        labels = [f"{r.setting}\n{r.context} · {r.decode_path}" for r in promotion.itertuples()]
        xs = range(len(promotion))
        ax.bar([x - 0.2 for x in xs], promotion["ttft_ratio"], width=0.4, label="TTFT ratio")
        ax.bar([x + 0.2 for x in xs], promotion["tpot_ratio"], width=0.4, label="TPOT ratio")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_ylabel("tiered / dense (geometric mean)")
        ax.legend(fontsize=7)
        ax.set_title("Latency relative to dense")
        fig.tight_layout()
        return _save(fig, path)
