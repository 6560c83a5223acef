"""The phase clock: exclusive times that sum to the outermost phases' wall time, no-op when off."""

from __future__ import annotations

import time

import pytest
import torch

from bcr import phases


class FakeTime:
    """``perf_counter`` that moves only when the test says so: exact expectations, no sleeps."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        self.now += dt


def test_nested_phases_are_exclusive_and_sum_to_the_total(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(phases, "time", fake)
    clock = phases.PhaseClock(torch.device("cpu"))
    with phases.timing(clock):
        with phases.phase(phases.DECODE_OTHER):
            fake.sleep(0.02)
            with phases.decode_attention():  # inside a decode step: opens decode_attention
                fake.sleep(0.03)
                with phases.phase(phases.VIEW_REBUILD):
                    fake.sleep(0.01)
        with phases.phase(phases.PREFILL_FORWARD), phases.decode_attention():  # stays prefill_forward
            fake.sleep(0.01)
    s = clock.seconds
    assert s[phases.VIEW_REBUILD] == pytest.approx(0.01, abs=1e-12)
    assert s[phases.DECODE_ATTENTION] == pytest.approx(0.03, abs=1e-12)
    assert s[phases.DECODE_OTHER] == pytest.approx(0.02, abs=1e-12)
    assert s[phases.PREFILL_FORWARD] == pytest.approx(0.01, abs=1e-12)
    assert sum(s.values()) == pytest.approx(clock.total, rel=1e-12)
    assert clock.total == pytest.approx(0.07, abs=1e-12)


def test_the_clock_reads_real_time():
    clock = phases.PhaseClock(torch.device("cpu"))
    with phases.timing(clock), phases.phase(phases.DECODE_OTHER):
        time.sleep(0.01)
    assert clock.seconds[phases.DECODE_OTHER] >= 0.01 and clock.total == clock.seconds[phases.DECODE_OTHER]


def test_phase_is_a_no_op_without_a_clock_and_rejects_unknown_names():
    with phases.phase(phases.DECODE_OTHER), phases.decode_attention():
        pass  # nothing current: nothing recorded, nothing raised
    clock = phases.PhaseClock(torch.device("cpu"))
    with phases.timing(clock), pytest.raises(KeyError, match="unknown phase"), phases.phase("forward"):
        pass
    with phases.phase(phases.DECODE_OTHER):
        pass
    assert clock.total == 0.0  # the clock is current only inside timing()
