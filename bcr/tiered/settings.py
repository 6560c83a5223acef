"""Tiered settings as data: named bands of depth, a baseline, one-knob variations, config checks.

A setting in the config may name a ``base`` and override single knobs (``middle_ret35: {base: middle,
retain: 0.35}``), so the note's variations read as what they are: one knob changed from the baseline.
:func:`check` is the cross-field validator listed in ``bcr.config.TRACK_CHECKS``; it runs before any
job is scheduled and names the offending key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bcr.config import resolve_base
from bcr.headline import promotion_contexts

# How exception tokens are ranked (bcr.tiered.summaries.exception_scores): ``reconstruction`` needs
# no query (each token's key and value error under its page's phantoms); ``attention`` is the
# observation queries' attention to each token (the question's, in the question-aware mode).
EXCEPTION_SIGNALS = ("reconstruction", "attention")

# Every resolved setting carries exactly these knobs (``base`` is resolved away).
KNOBS = (
    "band",
    "page_size",
    "sink_pages",
    "recent_pages",
    "retain",
    "obs_window",
    "surprise_pages",
    "phantoms_per_page",
    "cluster_iters",
)


@dataclass(frozen=True)
class TieredSetting:
    """One resolved setting: which layers are compressed and how each compressed layer keeps its pages."""

    name: str
    band: str
    band_range: tuple[float, float]
    page_size: int
    sink_pages: int
    recent_pages: int
    retain: float
    obs_window: int
    surprise_pages: int
    phantoms_per_page: int
    cluster_iters: int
    # How retained and surprise pages are chosen: by importance and summary error (the method), or,
    # for the negative controls (bcr.tiered.controls), at random (seeded) or not at all (recent_only).
    selection: str = "importance"
    selection_seed: int = 0
    neighbour_pages: int = 0  # pages after each importance-retained page kept with it (optional knob)
    # Exact exceptions inside summarised pages (optional knobs, bcr.tiered.summaries.exceptions): per
    # KV head, ``exceptions`` x N of a layer's tokens that its phantoms represent worst stay exact,
    # ranked by ``exception_signal``; ``exception_taper`` tilts the budget across the band's depth at
    # the same total (> 0: early layers get more, PyramidKV's shape; < 0: late layers).
    exceptions: float = 0.0
    exception_signal: str = "reconstruction"
    exception_taper: float = 0.0

    def exception_budget(self, layer: int, band: list[int], n_tokens: int) -> int:
        """Exception tokens per KV head for ``layer`` (one of ``band``) over an ``n_tokens`` prompt."""
        if self.exceptions <= 0:
            return 0
        j, b = band.index(layer), len(band)
        weight = 1.0 + self.exception_taper * (1.0 - 2.0 * (j + 0.5) / b)
        return round(self.exceptions * n_tokens * weight)

    def layers(self, num_layers: int) -> list[int]:
        """Compressed layer indices: layer ``i`` is in the band when its depth centre (i+0.5)/L is in [lo, hi)."""
        lo, hi = self.band_range
        return [i for i in range(num_layers) if lo <= (i + 0.5) / num_layers < hi]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["band_range"] = list(self.band_range)
        return d


def _raw_settings(tiered: dict) -> dict[str, dict]:
    return dict(tiered.get("settings") or {})


def resolve(config: dict, name: str) -> TieredSetting:
    """The named setting with its base chain merged (assumes :func:`check` passed)."""
    tiered = config["tiered"]
    raw = _raw_settings(tiered)
    if name not in raw:
        known = ", ".join(sorted(raw))
        raise KeyError(f"unknown tiered setting {name!r} (known: {known})")
    knobs = resolve_base(raw, name)
    band = knobs["band"]
    lo, hi = tiered["bands"][band]
    return TieredSetting(
        name=name,
        band=band,
        band_range=(float(lo), float(hi)),
        page_size=int(knobs["page_size"]),
        sink_pages=int(knobs["sink_pages"]),
        recent_pages=int(knobs["recent_pages"]),
        retain=float(knobs["retain"]),
        obs_window=int(knobs["obs_window"]),
        surprise_pages=int(knobs["surprise_pages"]),
        phantoms_per_page=int(knobs["phantoms_per_page"]),
        cluster_iters=int(knobs["cluster_iters"]),
        neighbour_pages=int(knobs.get("neighbour_pages", 0)),
        exceptions=float(knobs.get("exceptions", 0.0)),
        exception_signal=str(knobs.get("exception_signal", "reconstruction")),
        exception_taper=float(knobs.get("exception_taper", 0.0)),
    )


def sweep_settings(config: dict) -> list[str]:
    return list(config["tiered"]["sweep"]["settings"])


def control_settings(config: dict) -> list[str]:
    return list(config["tiered"]["sweep"].get("controls") or [])


def promotion_override(config: dict) -> list[str] | None:
    override = (config["tiered"].get("promotion") or {}).get("override")
    return None if override is None else list(override)


def promotion_max_settings(config: dict) -> int | None:
    limit = (config["tiered"].get("promotion") or {}).get("max_settings")
    return None if limit is None else int(limit)


def timed_contexts(config: dict) -> list[int]:
    """The promotion contexts whose runs are timed (``tiered.timed_contexts``): the largest, where
    the latency claims are made, or every one."""
    contexts = promotion_contexts(config)
    return contexts if config["tiered"].get("timed_contexts", "largest") == "all" else contexts[-1:]


def sweep_context(config: dict) -> int:
    return int(config["prompts"]["contexts"][0])


# --- cross-field checks (bcr.config.TRACK_CHECKS) -------------------------------------------------------


def _check_setting(name: str, raw: dict[str, dict], bands: dict) -> list[tuple[str, str]]:
    key = f"tiered.settings.{name}"
    try:
        knobs = resolve_base(raw, name)
    except KeyError as exc:
        return [(f"{key}.base", f"unknown base setting {exc.args[0]!r} (known: {', '.join(sorted(raw))})")]
    except ValueError as exc:
        return [(f"{key}.base", str(exc))]
    missing = [k for k in KNOBS if k not in knobs]
    if missing:
        return [(f"{key}.{k}", "required knob is missing (set it here or on its base)") for k in missing]
    out = []
    where = lambda knob: f"{key}.{knob}" if knob in raw[name] else f"{key}.{knob} (inherited from base)"  # noqa: E731
    if knobs["band"] not in bands:
        out.append((where("band"), f"unknown band {knobs['band']!r} (known: {', '.join(sorted(bands))})"))
    if not 0.0 <= float(knobs["retain"]) <= 1.0:
        out.append((where("retain"), f"{knobs['retain']} is outside [0, 1]"))
    if int(knobs["page_size"]) <= 0:
        out.append((where("page_size"), f"{knobs['page_size']} must be > 0"))
    elif int(knobs["phantoms_per_page"]) >= int(knobs["page_size"]):
        out.append(
            (
                where("phantoms_per_page"),
                f"{knobs['phantoms_per_page']} must be < page_size {knobs['page_size']} "
                "(a summary as large as its page compresses nothing)",
            )
        )
    elif int(knobs["obs_window"]) > int(knobs["recent_pages"]) * int(knobs["page_size"]):
        out.append(
            (
                where("obs_window"),
                f"{knobs['obs_window']} exceeds the exact recent window "
                f"(recent_pages x page_size = {int(knobs['recent_pages']) * int(knobs['page_size'])}): "
                "observation queries must see every candidate page whole",
            )
        )
    if int(knobs["phantoms_per_page"]) < 1:
        out.append((where("phantoms_per_page"), f"{knobs['phantoms_per_page']} must be >= 1"))
    if int(knobs["recent_pages"]) < 1:
        out.append((where("recent_pages"), "must be >= 1 (the newest, possibly partial, page stays exact)"))
    return out


def check(config: dict) -> list[tuple[str, str]]:
    """Cross-field checks for the ``tiered`` section: (dotted key, message) per problem."""
    tiered = config.get("tiered")
    if tiered is None:
        return []
    out: list[tuple[str, str]] = []
    bands = tiered.get("bands") or {}
    for band, rng in bands.items():
        if len(rng) == 2 and not float(rng[0]) < float(rng[1]):
            out.append((f"tiered.bands.{band}", f"empty band {rng}: the lower bound must be below the upper"))
    raw = _raw_settings(tiered)
    for name in raw:
        out.extend(_check_setting(name, raw, bands))

    def known(names, key):
        for i, n in enumerate(names or []):
            if n not in raw:
                out.append((f"{key}[{i}]", f"unknown setting {n!r} (known: {', '.join(sorted(raw))})"))

    sweep = tiered.get("sweep") or {}
    known(sweep.get("settings"), "tiered.sweep.settings")
    known(sweep.get("controls"), "tiered.sweep.controls")
    for i, n in enumerate(sweep.get("controls") or []):
        if n not in (sweep.get("settings") or []):
            out.append((f"tiered.sweep.controls[{i}]", f"control {n!r} is not in tiered.sweep.settings"))
    known((tiered.get("promotion") or {}).get("override"), "tiered.promotion.override")
    n_prompts = tiered.get("n_prompts")
    if n_prompts is not None and n_prompts > config["prompts"]["n_prompts"]:
        out.append(
            (
                "tiered.n_prompts",
                f"{n_prompts} is more than the prompt sets hold (prompts.n_prompts = {config['prompts']['n_prompts']})",
            )
        )
    if config["model"]["attn_implementation"] != "sdpa":
        out.append(
            (
                "model.attn_implementation",
                "the tiered track delegates dense attention to 'sdpa' (bit-exact keep_all needs the same kernel)",
            )
        )
    return out
