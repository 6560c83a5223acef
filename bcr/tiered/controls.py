"""Negative controls: compressors at a setting's stored fraction that do not look at what matters.

A test bed tells a method apart only if a bad compressor at the same budget fails it.  Each control is
matched to a setting -- same band, page size, sink pages and phantoms, and the same number of exact
pages, so its stored fraction matches -- and differs only in how the exact pages are chosen:

* ``recent_only`` -- no importance retention and no surprise pages: the recent window grows by the
  pages those would have kept (StreamingLLM-like: sinks, a long recent window, phantoms elsewhere);
* ``random_pages`` -- the same number of retained and surprise pages, chosen by a seeded random score.
"""

from __future__ import annotations

import dataclasses

from bcr.tiered.settings import TieredSetting

CONTROLS = ("recent_only", "random_pages")


def matched(setting: TieredSetting, kind: str, seed: int = 0) -> TieredSetting:
    """The ``kind`` control matched to ``setting`` (on any prompt length: :func:`manifest.select_exact`
    sizes a ``recent_only`` window from the pages the setting's retention and surprise would keep)."""
    name = f"{kind}~{setting.name}"
    if kind == "random_pages":
        return dataclasses.replace(setting, name=name, selection="random", selection_seed=seed)
    if kind == "recent_only":
        return dataclasses.replace(setting, name=name, selection="recent_only")
    raise ValueError(f"unknown control {kind!r} (known: {', '.join(CONTROLS)})")
