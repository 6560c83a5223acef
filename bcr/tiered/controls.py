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

from bcr.tiered import manifest as mf
from bcr.tiered.settings import TieredSetting

CONTROLS = ("recent_only", "random_pages")


def matched(setting: TieredSetting, kind: str, n_tokens: int, seed: int = 0) -> TieredSetting:
    """The ``kind`` control matched to ``setting`` on ``n_tokens``-token prompts."""
    name = f"{kind}~{setting.name}"
    if kind == "random_pages":
        return dataclasses.replace(setting, name=name, selection="random", selection_seed=seed)
    if kind == "recent_only":
        total = mf.n_pages(n_tokens, setting.page_size)
        retained = len(mf.select_exact(0, n_tokens, setting, [0.0] * total).important)
        return dataclasses.replace(
            setting,
            name=name,
            selection="recent_only",
            recent_pages=setting.recent_pages + retained + setting.surprise_pages,
            retain=0.0,
            surprise_pages=0,
        )
    raise ValueError(f"unknown control {kind!r} (known: {', '.join(CONTROLS)})")
