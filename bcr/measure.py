"""One measuring loop for every timed comparison: warm-up, repeats in rotating order, the gate.

The dense baseline and the tiered harness (and, later, the serving engine) measure the same way:

* warm-up calls first (the caller passes them for its first prompt), unrecorded;
* ``repeats`` rounds in which every arm runs once, the order rotating each round (dense first, then
  tiered first, ...), so neither side always meets the caches and clocks the other one left behind;
* the determinism gate: every repeat of an arm must give the same tokens, or nothing downstream
  could be trusted (:class:`DeterminismError`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

T = TypeVar("T")


class DeterminismError(RuntimeError):
    """Repeats of the same greedy run disagree, or a run disagrees with the dense baseline file.

    The gate every exactness claim rests on."""


def rotated(names: list, k: int) -> list:
    """``names`` started at position ``k`` (mod len): round k's running order."""
    k %= len(names)
    return names[k:] + names[:k]


def interleaved(
    arms: Mapping[Hashable, Callable[[], T]], repeats: int, warmup: int = 0, start: int = 0
) -> dict[Hashable, list[T]]:
    """Each arm's ``repeats`` results, measured in rounds whose order rotates (see the module docstring).

    ``start`` offsets the rotation, so a caller timing one round per prompt keeps rotating across prompts."""
    names = list(arms)
    for w in range(warmup):
        for name in rotated(names, w):
            arms[name]()
    out: dict[str, list[T]] = {name: [] for name in names}
    for r in range(repeats):
        for name in rotated(names, start + r):
            out[name].append(arms[name]())
    return out


def check_repeats(values: list[Hashable], what: str, prompt_id: str, kind: str = "greedy outputs") -> None:
    """Raise :class:`DeterminismError` unless every repeat gave the same value."""
    for v in values[1:]:
        if v != values[0]:
            raise DeterminismError(
                f"prompt {prompt_id}: {what} {kind} differ between repeats ({values[0]} vs {v}); "
                "pin threads/attention implementation before measuring"
            )


def median_present(xs: list[float | None]) -> float | None:
    """Median of the measured values (None = not measured, e.g. CUDA memory on CPU); None if none."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def max_present(xs: list[int | None]) -> int | None:
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None
