"""Where a generation's time goes: exclusive wall time per named phase, for the latency decomposition.

A :class:`PhaseClock` is made current for one run (:func:`timing`); the code that runs then opens
phases with :func:`phase` -- greedy decoding opens ``prefill_forward`` around the prompt and
``decode_other`` around each decode step, the tiered cache opens its compression phases inside
them, the attention function ``decode_attention`` and the densify path ``view_rebuild``.  A phase's
time is exclusive: what its nested phases took is subtracted from it, so the phases of a run sum to
the wall time of its outermost phases, which cover the whole generation.  With no clock current,
:func:`phase` is a no-op (the timed runs and the exactness runs carry no timers).

On CUDA every phase boundary synchronises the device, so a phase is charged for the kernels it
launched; that serialises the run, which is why the instrumented runs are separate from the timed
ones and report their overhead against them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

import torch

from bcr.contracts import DECOMPOSITION_PHASES
from bcr.runtime import synchronize

PHASES = DECOMPOSITION_PHASES
(
    PREFILL_FORWARD,
    SCORING,
    PHANTOMS,
    SURPRISE,
    PACKING,
    DECODE_ATTENTION,
    VIEW_REBUILD,
    DECODE_OTHER,
) = PHASES
COMPRESSION_PHASES = (SCORING, PHANTOMS, SURPRISE, PACKING)


class PhaseClock:
    """Exclusive seconds per phase; ``total`` is the wall time of the outermost phases."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.total = 0.0
        self._open: list[tuple[str, float]] = []  # (name, seconds its children took so far)

    @property
    def innermost(self) -> str | None:
        return self._open[-1][0] if self._open else None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in self.seconds:
            raise KeyError(f"unknown phase {name!r} (known: {', '.join(PHASES)})")
        synchronize(self.device)
        t0 = time.perf_counter()
        self._open.append((name, 0.0))
        try:
            yield
        finally:
            synchronize(self.device)
            dt = time.perf_counter() - t0
            _, children = self._open.pop()
            self.seconds[name] += dt - children
            if self._open:
                parent, c = self._open[-1]
                self._open[-1] = (parent, c + dt)
            else:
                self.total += dt


_CURRENT: ContextVar[PhaseClock | None] = ContextVar("bcr_phase_clock", default=None)


@contextlib.contextmanager
def timing(clock: PhaseClock) -> Iterator[PhaseClock]:
    """Make ``clock`` current for the block (one instrumented run)."""
    token = _CURRENT.set(clock)
    try:
        yield clock
    finally:
        _CURRENT.reset(token)


def phase(name: str) -> contextlib.AbstractContextManager:
    """Open phase ``name`` on the current clock; a no-op when no run is instrumented."""
    clock = _CURRENT.get()
    return contextlib.nullcontext() if clock is None else clock.phase(name)


def decode_attention() -> contextlib.AbstractContextManager:
    """The attention of a decode step (prefill attention stays inside ``prefill_forward``)."""
    clock = _CURRENT.get()
    if clock is None or clock.innermost != DECODE_OTHER:
        return contextlib.nullcontext()
    return clock.phase(DECODE_ATTENTION)
