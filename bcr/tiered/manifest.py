"""The page manifest of a compressed layer: which pages stay exact, which became phantoms, and why.

Selection, per compressed layer (DESIGN.md, "Tiered compression"):

1. the sink page(s) and the recent window (the newest, possibly partial, pages) are exact;
2. pages are added by importance until at least ``retain`` x N logical tokens are exact;
3. ``surprise_pages`` more pages are exact: the candidates whose phantom summary errs most;
4. every other page is a phantom page (``phantoms_per_page`` summary tokens);
5. inside the phantom pages, per KV head, the layer's exception budget of tokens the phantoms
   represent worst stay exact (``exceptions``: positions per KV head).

The manifest is kept so that a non-exact result can name the page that was lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from bcr.tiered.settings import TieredSetting


def n_pages(n_tokens: int, page_size: int) -> int:
    return -(-n_tokens // page_size)


def page_span(page: int, page_size: int, n_tokens: int) -> tuple[int, int]:
    return page * page_size, min(n_tokens, (page + 1) * page_size)


def pages_of_span(start: int, end: int, page_size: int) -> list[int]:
    """Pages overlapping the token span [start, end)."""
    if end <= start:
        return []
    return list(range(start // page_size, (end - 1) // page_size + 1))


@dataclass
class LayerManifest:
    """Page decisions of one compressed layer (page indices are logical: page p = tokens [p*ps, (p+1)*ps))."""

    layer: int
    n_tokens: int
    page_size: int
    phantoms_per_page: int
    sink: list[int]
    recent: list[int]
    important: list[int]
    surprise: list[int] = field(default_factory=list)
    phantom: list[int] = field(default_factory=list)
    importance: list[float] = field(default_factory=list)  # per page, attention share (sums to 1)
    phantom_error: dict[int, float] = field(default_factory=dict)  # per candidate page
    exceptions: list[list[int]] = field(default_factory=list)  # per KV head: exact token positions

    @property
    def n_pages(self) -> int:
        return n_pages(self.n_tokens, self.page_size)

    @property
    def exact(self) -> list[int]:
        return sorted(set(self.sink) | set(self.recent) | set(self.important) | set(self.surprise))

    def status(self, page: int) -> str:
        if page in self.phantom:
            return "phantom"
        if page in self.surprise:
            return "surprise"
        return "exact"

    @property
    def exact_tokens(self) -> int:
        return sum(
            page_span(p, self.page_size, self.n_tokens)[1] - page_span(p, self.page_size, self.n_tokens)[0]
            for p in self.exact
        )

    @property
    def exception_tokens(self) -> int:
        """Exception tokens per KV head (every head keeps the same number)."""
        return len(self.exceptions[0]) if self.exceptions else 0

    @property
    def stored_tokens(self) -> int:
        """Tokens this layer stores for the prompt: exact tokens, k summaries per phantom page, and
        the exceptions inside phantom pages."""
        return self.exact_tokens + self.phantoms_per_page * len(self.phantom) + self.exception_tokens

    def to_json(self) -> dict:
        """Compact record for result rows (importance/error only for the pages that matter to a reader)."""
        top_phantom = max(self.phantom, key=lambda p: self.importance[p], default=None)
        return {
            "layer": self.layer,
            "n_pages": self.n_pages,
            "sink": self.sink,
            "recent": self.recent,
            "important": sorted(self.important),
            "surprise": sorted(self.surprise),
            "phantom": self.phantom,
            "top_phantom_page": top_phantom,
            "top_phantom_share": None if top_phantom is None else round(self.importance[top_phantom], 6),
            "exceptions": self.exceptions,
        }


def select_exact(
    layer: int,
    n_tokens: int,
    setting: TieredSetting,
    importance: list[float],
    forced_phantom: Iterable[int] = (),
) -> LayerManifest:
    """Steps 1-2: sink, recent window, then pages by importance (ties: lower page first) up to ``retain``,
    each with its next ``neighbour_pages`` pages.

    ``forced_phantom`` pages are never chosen (a test and diagnosis hook: "what if this page were lost").
    """
    ps = setting.page_size
    total = n_pages(n_tokens, ps)
    forced = set(forced_phantom)
    score = control_scores(setting, layer, total) or importance
    sink = list(range(min(setting.sink_pages, total)))
    recent_pages = setting.recent_pages
    if setting.selection == "recent_only":
        # the control keeps as many exact pages as the method, all of them at the end of the prompt
        method = dataclasses.replace(setting, selection="importance")
        m = select_exact(layer, n_tokens, method, [0.0] * total)
        recent_pages += len(m.important) + min(setting.surprise_pages, len(candidates(m)))
    recent = list(range(max(0, total - recent_pages), total))
    clash = forced & (set(sink) | set(recent))
    if clash:
        raise ValueError(
            f"layer {layer}: pages {sorted(clash)} are sink/recent pages and cannot be forced phantom"
        )
    m = LayerManifest(layer, n_tokens, ps, setting.phantoms_per_page, sink, recent, [], importance=importance)
    target = setting.retain * n_tokens if setting.selection != "recent_only" else 0.0
    exact = set(sink) | set(recent)
    tokens = m.exact_tokens
    order = sorted(range(total), key=lambda p: (-score[p], p))
    for p in order:
        if tokens >= target:
            break
        if p in exact or p in forced:
            continue
        for q in range(p, min(total, p + 1 + setting.neighbour_pages)):
            if q in exact or q in forced:
                continue
            m.important.append(q)
            exact.add(q)
            a, b = page_span(q, ps, n_tokens)
            tokens += b - a
    return m


def control_scores(setting: TieredSetting, layer: int, total: int) -> list[float] | None:
    """Seeded random page scores for the ``random`` selection (a negative control), else None.

    Seeded by (selection_seed, layer): the same draw on every run, a different one per layer.
    """
    if setting.selection != "random":
        return None
    return np.random.default_rng([setting.selection_seed, layer]).random(total).tolist()


def candidates(m: LayerManifest) -> list[int]:
    """Pages not yet exact (all full pages: the partial last page is always in the recent window)."""
    exact = set(m.exact)
    return [p for p in range(m.n_pages) if p not in exact]


def finish(
    m: LayerManifest,
    cand: list[int],
    errors: list[float],
    surprise_pages: int,
    forced=(),
    scores: list[float] | None = None,
) -> None:
    """Steps 3-4: the worst-summarised candidates become surprise pages, the rest phantoms.

    ``scores`` (per page, :func:`control_scores`) replaces the summary error as the ranking: a
    control that picks its surprise pages without looking at what the summaries lose.
    """
    forced = set(forced)
    m.phantom_error = {p: float(e) for p, e in zip(cand, errors, strict=True)}
    rank = m.phantom_error if scores is None else {p: scores[p] for p in cand}
    eligible = sorted((p for p in cand if p not in forced), key=lambda p: (-rank[p], p))
    m.surprise = sorted(eligible[:surprise_pages])
    chosen = set(m.surprise)
    m.phantom = [p for p in cand if p not in chosen]
