"""The one plot style of the results site: deterministic SVG bytes and a few shared drawing helpers.

Every plot of the site (and of later tracks) draws through this module, so they read alike and
stay byte-for-byte reproducible:

* Determinism — the Agg backend, ``svg.hashsalt`` fixed, ``metadata={'Date': None}``, glyphs as
  paths from matplotlib's bundled DejaVu Sans, every rc setting pinned here (a user's matplotlibrc
  cannot leak in).  A versioned site must not change bytes when the data did not.
* Reading — categorical axes instead of crowded scatter labels (a row per setting, the name is the
  tick label, so labels cannot overlap); threshold and reference lines carry their own label; the
  study note's values are hollow black markers whose legend entry says they are the note's; error
  bars come from the same bootstrap intervals the tables show; legends sit outside the data area;
  log axes get plain tick labels (``300``, not ``3×10²``); limits follow the data's spread.
"""

from __future__ import annotations

import io as _io
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bcr import io

# Material indigo first (the site's primary colour), then colour-blind-distinguishable accents.
PALETTE = ["#3f51b5", "#e65100", "#00897b", "#8e24aa", "#6d4c41", "#546e7a", "#c2185b", "#f9a825"]
NOTE_COLOR = "black"
THRESHOLD_COLOR = "#b71c1c"
REFERENCE_COLOR = "#424242"
NOTE_LABEL = "the note (reference)"

STYLE = {
    "svg.hashsalt": "bcr-ledger",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.labelsize": 9.0,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "legend.fontsize": 8.0,
    "legend.frameon": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.axisbelow": True,
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "path.simplify": False,
    "errorbar.capsize": 3.0,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
}
METADATA = {"Date": None, "Creator": "bcr-memory ledger"}


def style() -> object:
    """``with style():`` around every figure of the site."""
    return plt.rc_context(STYLE)


def svg_bytes(fig: plt.Figure) -> bytes:
    buf = _io.BytesIO()
    fig.savefig(buf, format="svg", metadata=METADATA, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    return buf.getvalue()


class OverlappingLabels(UserWarning):
    """Two pieces of text of a site plot overlap (tick labels, titles, annotations, legend entries)."""


def overlapping_texts(fig: plt.Figure) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts of ``fig`` whose drawn boxes overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    hidden = set()  # tick labels outside their axis's view interval are not drawn
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                loc = tick.get_loc()
                if loc is None or not (lo - 1e-9 * abs(hi - lo) <= loc <= hi + 1e-9 * abs(hi - lo)):
                    hidden.update({id(tick.label1), id(tick.label2)})
    boxes = []
    for t in fig.findobj(Text):
        if id(t) in hidden or not t.get_visible() or not t.get_text().strip():
            continue
        bb = t.get_window_extent(renderer)
        if bb.width > 0 and bb.height > 0:
            boxes.append((t.get_text(), bb.shrunk(0.98, 0.9)))
    out = []
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1 :]:
            if ba.overlaps(bb):
                out.append((a, b))
    return out


def save(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as deterministic SVG, atomically; warn (:class:`OverlappingLabels`) if texts overlap."""
    clash = overlapping_texts(fig)
    if clash:
        warnings.warn(f"{path.name}: overlapping labels {clash[:5]}", OverlappingLabels, stacklevel=2)
    data = svg_bytes(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def plain_number(v: float, _pos: object = None) -> str:
    """A tick label without scientific notation: 0.5, 2, 300, 1,200."""
    if not math.isfinite(v):
        return ""
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def plain_log_axis(ax: Axes, axis: str = "x") -> None:
    """Log scale with ticks at 1, 2, 5 × 10^k labelled as plain numbers."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(plain_number))
    target.set_minor_formatter(NullFormatter())


def threshold_line(ax: Axes, value: float, label: str, axis: str = "x", color: str = THRESHOLD_COLOR) -> None:
    """A dashed line at ``value`` whose legend entry says what it is (e.g. "claim threshold C = 2")."""
    line = ax.axvline if axis == "x" else ax.axhline
    line(value, color=color, linestyle="--", linewidth=1.1, label=label, zorder=1)


def reference_line(ax: Axes, value: float, label: str, axis: str = "x") -> None:
    """A solid thin line for a reference value (e.g. "dense = 1")."""
    line = ax.axvline if axis == "x" else ax.axhline
    line(value, color=REFERENCE_COLOR, linestyle="-", linewidth=0.9, label=label, zorder=1)


def note_markers(ax: Axes, xs: Sequence[float], ys: Sequence[float], label: str = NOTE_LABEL) -> None:
    """The note's values: hollow black diamonds, one legend entry naming them as the note's."""
    if not len(xs):
        return
    ax.scatter(
        xs,
        ys,
        s=52,
        marker="D",
        facecolors="none",
        edgecolors=NOTE_COLOR,
        linewidths=1.2,
        label=label,
        zorder=4,
    )


def error_points(
    ax: Axes,
    xs: Sequence[float],
    ys: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    *,
    color: str,
    label: str,
    marker: str = "o",
    filled: Sequence[bool] | None = None,
) -> None:
    """Points with horizontal interval bars (``lows``/``highs`` absolute; NaN draws no bar)."""
    xerr = [
        [max(0.0, x - lo) if _finite(lo) else 0.0 for x, lo in zip(xs, lows, strict=True)],
        [max(0.0, hi - x) if _finite(hi) else 0.0 for x, hi in zip(xs, highs, strict=True)],
    ]
    ax.errorbar(xs, ys, xerr=xerr, fmt="none", ecolor=color, elinewidth=1.1, zorder=2)
    fill = list(filled) if filled is not None else [True] * len(xs)
    ax.scatter(
        [x for x, f in zip(xs, fill, strict=True) if f],
        [y for y, f in zip(ys, fill, strict=True) if f],
        s=34,
        marker=marker,
        color=color,
        label=label,
        zorder=3,
    )
    hollow = [(x, y) for x, y, f in zip(xs, ys, fill, strict=True) if not f]
    if hollow:
        ax.scatter(
            [p[0] for p in hollow],
            [p[1] for p in hollow],
            s=34,
            marker=marker,
            facecolors="white",
            edgecolors=color,
            linewidths=1.3,
            label=None if any(fill) else label,
            zorder=3,
        )


def spread_limits(
    values: Iterable[float], *, pad: float = 0.08, include: Iterable[float] = ()
) -> tuple[float, float]:
    """Axis limits around the data (and lines in ``include``), padded so markers are not clipped."""
    vals = [v for v in [*values, *include] if _finite(v)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
    return lo - pad * span, hi + pad * span


def legend_below(fig: plt.Figure, axes: Sequence[Axes], ncol: int | None = None) -> None:
    """One legend for the figure, below the panels (it never covers data)."""
    handles, labels, seen = [], [], set()
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab and not lab.startswith("_") and lab not in seen:
                seen.add(lab)
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(
            handles,
            labels,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=ncol or min(4, len(handles)),
            frameon=False,
        )


def _finite(v: object) -> bool:
    try:
        return v is not None and math.isfinite(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
