"""The site's plots: matplotlib SVG with deterministic bytes, drawn in the one shared style.

Style, determinism and the drawing helpers (threshold lines, the note's markers, interval bars,
plain log ticks, legends outside the data) live in :mod:`bcr.ledger.plotstyle`; this module only
decides what each plot shows.  The same data always gives the same file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from bcr.contracts import DECOMPOSITION_PHASES
from bcr.ledger import plotstyle as ps

NOTE_MARKERS = ["D", "s", "^", "v"]


def _col(df: pd.DataFrame, name: str) -> list[float]:
    """A numeric column as floats (NaN where absent: a plot without intervals draws no bars)."""
    if name not in df.columns:
        return [math.nan] * len(df)
    return [float(v) if v is not None else math.nan for v in pd.to_numeric(df[name], errors="coerce")]


def _ctx_label(context: int, note_ctx: dict[int, int] | None) -> str:
    ref = (note_ctx or {}).get(int(context))
    return f"{context}" if ref is None or ref == int(context) else f"{context} (the note's {ref})"


def compression_vs_exactness(
    promotion: pd.DataFrame,
    sweep: pd.DataFrame,
    reference: dict,
    path: Path,
    *,
    threshold: float | None = 2.0,
    note_ctx: dict[int, int] | None = None,
    cap: dict | None = None,
) -> Path:
    """One row per setting: stored-token compression C per context, filled when exact on every prompt.

    ``promotion`` and ``sweep`` are the derived tables of one decode path (the caller filters).
    Bars are the bootstrap intervals of C over prompts (``compression_low``/``_high``) where given;
    a hollow marker is a setting that was not exact on every prompt (its n_exact/N beside it).  The
    note's promotion rows are hollow black markers, one shape per note context, on their setting's
    row; the claim threshold is a labelled dashed line.  ``cap`` (``{"setting", "value"}``, from the
    limitations) marks the most C that setting's fixed budgets allow in this config, on its row.
    """
    frames = [f for f in (sweep, promotion) if len(f)]
    ours = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    ref = reference.get("promotion", {}).get("rows", [])
    settings = sorted(set(ours["setting"]) if len(ours) else set())
    settings += sorted({r.get("setting", "the note") for r in ref} - set(settings))
    row = {s: i for i, s in enumerate(settings)}
    contexts = sorted(set(ours["context"])) if len(ours) else []
    with ps.style():
        fig, ax = plt.subplots(figsize=(7.2, 0.42 * max(3, len(settings)) + 1.2))
        step = 0.5 / max(1, len(contexts))
        xs_all: list[float] = []
        for k, context in enumerate(contexts):
            g = ours[ours["context"] == context]
            ys = [row[s] + (k - (len(contexts) - 1) / 2) * step for s in g["setting"]]
            xs = _col(g, "compression")
            exact = [int(e) == int(n) for e, n in zip(g["n_exact"], g["n"], strict=True)]
            lows, highs = _col(g, "compression_low"), _col(g, "compression_high")
            ps.error_points(
                ax,
                xs,
                ys,
                lows,
                highs,
                color=ps.color(k),
                label=f"ours, {_ctx_label(context, note_ctx)}",
                filled=exact,
            )
            for x, y, e, n, ok in zip(xs, ys, g["n_exact"], g["n"], exact, strict=True):
                if not ok:
                    ax.annotate(
                        f"{int(e)}/{int(n)} exact",
                        (x, y),
                        xytext=(7, -3),
                        textcoords="offset points",
                        fontsize=7,
                    )
            xs_all += [*xs, *[v for v in highs if not math.isnan(v)]]
        note_contexts = sorted({int(r["context"]) for r in ref if "context" in r})
        for k, nc in enumerate(note_contexts or [None]):
            rows = [r for r in ref if r.get("context") == nc] if nc is not None else ref
            xs = [float(r["compression"]) for r in rows]
            # the note's contexts side by side on their setting's row, as ours are
            off = (
                (k - (len(note_contexts) - 1) / 2) * 0.5 / max(1, len(note_contexts))
                if note_contexts
                else 0.0
            )
            ys = [row[r.get("setting", "the note")] + off for r in rows]
            label = f"{ps.NOTE_LABEL}, {nc}" if nc is not None else ps.NOTE_LABEL
            ax.scatter(
                xs, ys, s=56, marker=NOTE_MARKERS[k % len(NOTE_MARKERS)], facecolors="none",
                edgecolors=ps.NOTE_COLOR, linewidths=1.2, label=label, zorder=4,
            )  # fmt: skip
            xs_all += xs
        if threshold is not None:
            ps.threshold_line(ax, threshold, f"claim threshold C = {threshold:g}")
        if cap and cap.get("setting") in row and math.isfinite(float(cap["value"])):
            y = row[cap["setting"]]
            ax.plot(
                [cap["value"]] * 2, [y - 0.4, y + 0.4], color=ps.REFERENCE_COLOR, linewidth=2.0,
                label=f"most C {cap['setting']}'s budgets allow here ({cap['value']:.3g}x; see limitations)",
                zorder=2,
            )  # fmt: skip
            xs_all.append(float(cap["value"]))
        if any(math.isfinite(v) for v in xs_all):
            ax.set_xlim(*ps.spread_limits(xs_all, include=[1.0, threshold or 1.0]))
        ax.set_yticks(range(len(settings)), settings)
        ax.set_ylim(len(settings) - 0.5, -0.5)
        ax.set_xlabel("stored-token compression C (×), geometric mean over prompts; bars: 95% interval")
        ax.set_title("Compression per setting: filled = exact on every prompt, hollow = not")
        fig.tight_layout()
        ps.legend_below(fig, [ax], ncol=2)
        return ps.save(fig, path)


def latency_ratios(
    promotion: pd.DataFrame, reference: dict, path: Path, *, note_ctx: dict[int, int] | None = None
) -> Path:
    """TTFT and TPOT tiered/dense per (setting, context, decode path), with intervals and the note's values."""
    labels = [
        f"{r.setting} · {_ctx_label(r.context, note_ctx)}"
        + (f" · {r.decode_path}" if "decode_path" in promotion.columns else "")
        for r in promotion.itertuples()
    ]
    ref = {
        (r["setting"], int(r["context"])): r
        for r in reference.get("promotion", {}).get("rows", [])
        if "setting" in r
    }
    with ps.style():
        fig, axes = plt.subplots(1, 2, figsize=(8.8, 0.36 * max(3, len(promotion)) + 1.3), sharey=True)
        for k, (ax, metric, title) in enumerate(
            zip(axes, ("ttft_ratio", "tpot_ratio"), ("TTFT", "TPOT"), strict=True)
        ):
            ys = list(range(len(promotion)))
            xs = _col(promotion, metric)
            lows, highs = _col(promotion, f"{metric}_low"), _col(promotion, f"{metric}_high")
            ps.error_points(ax, xs, ys, lows, highs, color=ps.color(k), label=f"ours, {title} (95% interval)")
            nx, ny = [], []
            for y, r in zip(ys, promotion.itertuples(), strict=True):
                note = ref.get((r.setting, (note_ctx or {}).get(int(r.context), int(r.context))))
                if note and metric in note:
                    nx.append(float(note[metric]))
                    ny.append(y)
            ps.note_markers(ax, nx, ny, label=f"{ps.NOTE_LABEL}, same setting at the note's context")
            ps.reference_line(ax, 1.0, "dense = 1 (no slowdown)")
            ax.set_xlim(*ps.spread_limits([*xs, *highs, *lows, *nx], include=[1.0]))
            ax.set_xlabel(f"{title} tiered / dense (×)")
            ax.set_title(f"{title} relative to dense")
        axes[0].set_yticks(range(len(promotion)), labels)
        axes[0].set_ylim(len(promotion) - 0.5, -0.5)
        fig.tight_layout()
        ps.legend_below(fig, list(axes), ncol=2)
        return ps.save(fig, path)


def ratio_bars(promotion: pd.DataFrame, path: Path, reference: dict | None = None, **kw: object) -> Path:
    """Former name of :func:`latency_ratios` (kept for callers of the first site version)."""
    return latency_ratios(promotion, reference or {}, path, **kw)  # type: ignore[arg-type]


def cache_ops_bars(cache_ops: pd.DataFrame, page_size: int, path: Path) -> Path:
    """µs per operation, p50 bars with a whisker to p99, per arm; one panel per workload (log scale)."""
    df = cache_ops[cache_ops["page_size"] == page_size]
    workloads = sorted(df["workload"].unique())
    arms = sorted(df["arm"].unique(), key=lambda a: (a != "bcr", a))
    ops = sorted(df["op"].unique())
    n = max(1, len(workloads))
    with ps.style():
        fig, axes = plt.subplots(
            1,
            n,
            figsize=(3.1 * n + 0.8, 0.5 * len(ops) * max(1, len(arms)) * 0.45 + 1.4),
            sharey=True,
            squeeze=False,
        )
        height = 0.8 / max(1, len(arms))
        for ax, workload in zip(axes[0], workloads, strict=False):
            g = df[df["workload"] == workload].set_index(["op", "arm"])
            for i, arm in enumerate(arms):
                ys = [k - 0.4 + height * (i + 0.5) for k in range(len(ops))]
                p50 = [float(g.loc[(op, arm), "us_p50"]) if (op, arm) in g.index else math.nan for op in ops]
                p99 = [float(g.loc[(op, arm), "us_p99"]) if (op, arm) in g.index else math.nan for op in ops]
                ax.barh(ys, p50, height=height * 0.9, color=ps.color(i), label=arm)
                err = [
                    [0.0] * len(ops),
                    [max(0.0, b - a) if not math.isnan(b) else 0.0 for a, b in zip(p50, p99, strict=True)],
                ]
                ax.errorbar(p50, ys, xerr=err, fmt="none", ecolor="#333333", elinewidth=0.7, capsize=1.5)
            ps.plain_log_axis(ax, "x")
            ax.set_title(workload)
            ax.set_xlabel("µs per operation (bar p50, whisker p99)")
        axes[0][0].set_yticks(range(len(ops)), ops)
        axes[0][0].set_ylim(len(ops) - 0.5, -0.5)
        fig.suptitle(f"Cache-operation cost, page size {page_size}")
        fig.tight_layout()
        ps.legend_below(fig, list(axes[0]), ncol=len(arms))
        return ps.save(fig, path)


def ttft_distributions(serving: pd.DataFrame, path: Path) -> Path:
    """Empirical CDF of per-request TTFT per arm, one panel per (engine, workload)."""
    groups = sorted(serving.groupby(["engine", "workload"]).groups)
    n = max(1, len(groups))
    with ps.style():
        fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.0), squeeze=False, sharey=True)
        for ax, (engine, workload) in zip(axes[0], groups, strict=False):
            g = serving[(serving["engine"] == engine) & (serving["workload"] == workload)]
            for i, (arm, h) in enumerate(sorted(g.groupby("arm"))):
                xs = sorted(pd.to_numeric(h["ttft_s"], errors="coerce").dropna() * 1000)
                ys = [(j + 1) / len(xs) for j in range(len(xs))]
                ax.step(
                    xs, ys, where="post", color=ps.color(i), label=f"{arm} (n = {len(xs)})" if n == 1 else arm
                )
            ps.plain_log_axis(ax, "x")
            ax.set_xlabel("TTFT (ms)")
            ax.set_title(f"{workload} ({engine})")
        axes[0][0].set_ylabel("fraction of requests")
        fig.tight_layout()
        ps.legend_below(fig, list(axes[0]))
        return ps.save(fig, path)


def decomposition_bars(decomp: pd.DataFrame, path: Path) -> Path:
    """Stacked milliseconds per phase at the largest context, one panel per query mode: the dense
    arms (DynamicCache, StaticCache) on top, then each promoted setting on each decode path."""
    largest = int(decomp["context"].max())
    d = decomp[decomp["context"] == largest]
    modes = list(dict.fromkeys(d["query_mode"]))
    phases = [p for p in DECOMPOSITION_PHASES if f"{p}_ms" in d.columns]
    n_bars = max(len(d[d["query_mode"] == m]) for m in modes)
    with ps.style():
        fig, axes = plt.subplots(
            len(modes), 1, figsize=(7.2, len(modes) * (0.32 * max(2, n_bars) + 0.9) + 0.9), squeeze=False
        )
        for ax, mode in zip(axes[:, 0], modes, strict=True):
            g = d[d["query_mode"] == mode].reset_index(drop=True)
            lefts = [0.0] * len(g)
            for i, phase in enumerate(phases):
                vals = [0.0 if math.isnan(v) else float(v) for v in g[f"{phase}_ms"]]
                ax.barh(range(len(g)), vals, left=lefts, color=ps.color(i), label=phase, height=0.6)
                lefts = [a + v for a, v in zip(lefts, vals, strict=True)]
            labels = [
                r.setting if r.setting == r.decode_path else f"{r.setting} · {r.decode_path}"
                for r in g.itertuples()
            ]
            ax.set_yticks(range(len(g)), labels)
            ax.set_ylim(len(g) - 0.5, -0.5)
            ax.set_title(f"{mode}, context {largest}")
        axes[-1, 0].set_xlabel("ms per generation (mean over the instrumented prompts)")
        fig.tight_layout()
        ps.legend_below(fig, list(axes[:, 0]), ncol=4)
        return ps.save(fig, path)


def _panel_grid(n: int) -> tuple[Any, Any]:
    """Up to two panels a row, one per (family, mode)."""
    cols = min(2, max(1, n))
    rows = max(1, -(-n // cols))
    return plt.subplots(rows, cols, figsize=(4.3 * cols, 3.1 * rows + 0.9), squeeze=False)


def _exact_rate_axes(ax: Any, workload: str, mode: str) -> None:
    """The frontier and peers panels' axes: exact rate against stored fraction, both in [0, 1]."""
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{workload}, {mode}", fontsize=9)
    ax.set_xlabel("stored fraction (median over prompts)")
    ax.set_ylabel("exact rate (answer span)")


def frontier(
    table: pd.DataFrame,
    model: str,
    path: Path,
    *,
    promoted: pd.DataFrame | None = None,
    note_fraction: float | None = None,
) -> Path:
    """One model's exactness frontier: a panel per (family, mode), exact rate (95% Clopper–Pearson
    bars) against the median stored fraction, one line per knob through its grid points (the base
    on every line).  ``promoted`` (setting, workload, query_mode, stored_fraction, n, n_exact: the
    sweep's rows of the promoted settings) are stars; ``note_fraction`` is the note's front_ret25."""
    t = table[table["model"] == model]
    panels = sorted({(w, m) for w, m in zip(t["workload"], t["query_mode"], strict=True)})
    knobs = [k for k in dict.fromkeys(t["knob"]) if k != "base"]
    with ps.style():
        fig, axes = _panel_grid(len(panels))
        used = []
        for ax, (workload, mode) in zip(axes.flat, panels, strict=False):
            used.append(ax)
            g = t[(t["workload"] == workload) & (t["query_mode"] == mode)]
            base = g[g["knob"] == "base"]
            for i, knob in enumerate(knobs):
                line = pd.concat([g[g["knob"] == knob], base]).sort_values("stored_fraction")
                rate = line["n_exact"] / line["n"]
                ax.plot(line["stored_fraction"], rate, color=ps.color(i), linewidth=1.0, zorder=2)
                ax.errorbar(
                    line["stored_fraction"], rate,
                    yerr=[(rate - line["exact_low"]).clip(lower=0), (line["exact_high"] - rate).clip(lower=0)],
                    fmt="o", color=ps.color(i), markersize=4, elinewidth=0.8, label=f"knob: {knob}", zorder=3,
                )  # fmt: skip
            if len(base):
                ax.scatter(
                    base["stored_fraction"], base["n_exact"] / base["n"], s=60, marker="o",
                    facecolors="none", edgecolors="black", linewidths=1.2, zorder=4,
                    label=f"base: {base['setting'].iloc[0]}",
                )  # fmt: skip
            if promoted is not None and len(promoted):
                p = promoted[(promoted["workload"] == workload) & (promoted["query_mode"] == mode)]
                if len(p):
                    ax.scatter(
                        p["stored_fraction"], p["n_exact"] / p["n"], s=90, marker="*",
                        color=ps.NOTE_COLOR, zorder=5, label="our promoted settings (sweep)",
                    )  # fmt: skip
            if note_fraction is not None:
                ps.threshold_line(ax, note_fraction, f"the note's front_ret25 ({note_fraction:.2f})")
            _exact_rate_axes(ax, workload, mode)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle(f"Exactness frontier: {model}")
        fig.tight_layout()
        ps.legend_below(fig, used, ncol=3)
        return ps.save(fig, path)


def peers(
    table: pd.DataFrame, frontier_table: pd.DataFrame | None, workload: str, mode: str, sweep_context: int,
    path: Path, ours: str,
) -> Path:  # fmt: skip
    """Exact rate (95% Clopper–Pearson bars) against stored fraction for one (family, mode), a panel
    per context: our frontier as a line on the sweep context's panel (the primary model's grid), our
    matched settings as stars, each press as its own line through its points."""
    t = table[(table["workload"] == workload) & (table["query_mode"] == mode)]
    contexts = sorted({int(c) for c in t["context"]})
    presses = [p for p in dict.fromkeys(table["press"]) if p != ours]  # one colour per press on every plot
    with ps.style():
        n = max(1, len(contexts))
        fig, axes = plt.subplots(1, n, figsize=(4.3 * n, 3.6), squeeze=False, sharey=True)
        for ax, context in zip(axes[0], contexts, strict=False):
            g = t[t["context"] == context]
            f = frontier_table if context == sweep_context else None
            if f is not None and len(f):
                f = f[(f["workload"] == workload) & (f["query_mode"] == mode)].sort_values("stored_fraction")
                if len(f):
                    f = f[f["model"] == f["model"].iloc[0]]
                    ax.plot(f["stored_fraction"], f["n_exact"] / f["n"], color="black", linewidth=1.0,
                            marker=".", label="ours: frontier (sweep context)", zorder=2)  # fmt: skip
            for i, press in enumerate([ours, *presses]):
                line = g[g["press"] == press].sort_values("stored_fraction")
                if not len(line):
                    continue
                rate = line["exact_rate"]
                err = [(rate - line["exact_low"]).clip(lower=0), (line["exact_high"] - rate).clip(lower=0)]
                mine = press == ours
                ax.errorbar(
                    line["stored_fraction"], rate, yerr=err, fmt="*-" if mine else "o-",
                    color=ps.NOTE_COLOR if mine else ps.color(i), markersize=9 if mine else 4,
                    elinewidth=0.8, linewidth=0.8, label="ours: matched settings" if mine else press, zorder=4 if mine else 3,
                )  # fmt: skip
            _exact_rate_axes(ax, workload, mode)
            ax.set_title(f"{context} tokens", fontsize=9)
        fig.suptitle(f"Peers on {workload}, {mode.replace('_', '-')}: exact rate against stored fraction")
        fig.tight_layout()
        ps.legend_below(fig, list(axes[0]), ncol=4)
        return ps.save(fig, path)
