"""The exactness frontier: how far each knob pushes the stored fraction before outputs change.

A grid over the knobs that set the stored fraction (``tiered.frontier``): each point is the ``base``
setting with one knob changed (``grid: axes``, a curve per knob) or with every combination of the
axes' values (``grid: product``).  Every point runs through :func:`bcr.tiered.harness.measure`, so
the whole grid shares one prefill per prompt and mode.  Rows are the harness's tiered rows plus
``knob`` and ``knob_value`` (which change a point stands for; ``base`` for the base itself).

Changing ``page_size`` keeps the token spans of the exact sink and recent windows (``sink_pages`` and
``recent_pages`` are rescaled), so a point changes the page grain and nothing else.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from bcr.tiered import settings as ts
from bcr.tiered.settings import TieredSetting

BASE_KNOB = "base"
# knobs a grid may vary: those that set the stored fraction (tiered.schema.yaml lists the same)
GRID_KNOBS = (
    "retain",
    "phantoms_per_page",
    "band",
    "page_size",
    "surprise_pages",
    "neighbour_pages",
    "exceptions",
    "exception_signal",
    "exception_taper",
)


def _with(config: dict, base: TieredSetting, changes: dict) -> TieredSetting:
    s = base
    for knob, value in changes.items():
        if knob == "band":
            lo, hi = config["tiered"]["bands"][value]
            s = replace(s, band=str(value), band_range=(float(lo), float(hi)))
        elif knob == "page_size":
            page = int(value)
            s = replace(
                s,
                page_size=page,
                sink_pages=max(1, -(-base.sink_pages * base.page_size // page)),
                recent_pages=max(1, -(-base.recent_pages * base.page_size // page)),
            )
        elif knob in ("retain", "exceptions", "exception_taper"):
            s = replace(s, **{knob: float(value)})
        elif knob == "exception_signal":
            s = replace(s, exception_signal=str(value))
        else:
            s = replace(s, **{knob: int(value)})
    return s


def point_name(base: str, changes: dict) -> str:
    return base if not changes else base + ":" + ",".join(f"{k}={v}" for k, v in changes.items())


def grid(config: dict) -> list[tuple[TieredSetting, str, str]]:
    """Every grid point as (setting, knob, knob value), the base first, no point twice."""
    spec = config["tiered"]["frontier"]
    base = ts.resolve(config, spec["base"])
    axes = {k: list(v) for k, v in spec["axes"].items()}
    if spec.get("grid", "axes") == "product":
        combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
        labelled = [(c, "grid", ",".join(f"{k}={v}" for k, v in c.items())) for c in combos]
    else:
        labelled = [({k: v}, k, str(v)) for k, values in axes.items() for v in values]
    out, seen = [(base, BASE_KNOB, spec["base"])], {_key(base)}
    for changes, knob, value in labelled:
        s = _with(config, base, changes)
        if _key(s) in seen:  # the base's own value on an axis
            continue
        seen.add(_key(s))
        out.append((replace(s, name=point_name(spec["base"], changes)), knob, value))
    return out


def _key(s: TieredSetting) -> tuple:
    """What a point computes: its knobs, with the exception signal and taper dropped when it keeps
    no exceptions (they change nothing then, so such points are one point)."""
    d = s.as_dict()
    d.pop("name")
    if not s.exceptions:
        d.pop("exception_signal")
        d.pop("exception_taper")
    return tuple(sorted((k, str(v)) for k, v in d.items()))


def check(config: dict) -> list[tuple[str, str]]:
    """Cross-field checks of ``tiered.frontier``: a known base, known bands, valid points."""
    spec = (config.get("tiered") or {}).get("frontier")
    if not spec:
        return []
    raw = config["tiered"].get("settings") or {}
    if spec["base"] not in raw:
        return [
            ("tiered.frontier.base", f"unknown setting {spec['base']!r} (known: {', '.join(sorted(raw))})")
        ]
    bands = config["tiered"].get("bands") or {}
    out = []
    for i, band in enumerate(spec["axes"].get("band", [])):
        if band not in bands:
            out.append(
                (f"tiered.frontier.axes.band[{i}]", f"unknown band {band!r} (known: {', '.join(bands)})")
            )
    if out:
        return out
    try:
        points = grid(config)
    except (KeyError, ValueError):
        return []  # the settings' own check names the problem
    for point, _, _ in points:
        if point.phantoms_per_page >= point.page_size:
            out.append(
                (
                    "tiered.frontier.axes",
                    f"point {point.name} has {point.phantoms_per_page} phantoms on a {point.page_size}-token "
                    "page (a summary as large as its page compresses nothing)",
                )
            )
    return out
