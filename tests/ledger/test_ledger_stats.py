"""The bootstrap intervals behind every ratio verdict: seeded, centred, and honest about small n."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bcr.ledger.rules import NOT_YET, REJECTED, SUPPORTED, decide
from bcr.ledger.stats import Interval, geomean, geomean_interval, quantile_ratio_interval

BOOT = {"level": 0.95, "resamples": 2000, "seed": 7}


def test_geomean_of_reciprocal_ratios_is_one():
    assert geomean([2.0, 0.5]) == pytest.approx(1.0)
    assert math.isnan(geomean([]))
    assert geomean([4.0, -1.0, float("nan"), 1.0]) == pytest.approx(2.0)  # invalid ratios are dropped


def test_interval_is_seeded_and_contains_the_point():
    ratios = np.exp(np.random.default_rng(0).normal(0.3, 0.2, 12))
    a = geomean_interval(ratios, **BOOT)
    b = geomean_interval(ratios, **BOOT)
    assert a == b
    assert a.low < a.point < a.high
    assert a.n == 12
    other = geomean_interval(ratios, level=0.95, resamples=2000, seed=8)
    assert other != a  # the seed is really used


def test_interval_narrows_with_more_prompts():
    rng = np.random.default_rng(1)
    small = geomean_interval(np.exp(rng.normal(0, 0.2, 6)), **BOOT)
    large = geomean_interval(np.exp(rng.normal(0, 0.2, 300)), **BOOT)
    assert (large.high - large.low) < (small.high - small.low) / 3


def test_quantile_ratio_recovers_a_scaled_arm():
    rng = np.random.default_rng(2)
    base = np.exp(rng.normal(np.log(0.05), 0.1, 400))
    iv = quantile_ratio_interval(base * 1.2, base, q=0.5, **BOOT)
    assert iv.point == pytest.approx(1.2)
    assert iv.low < 1.2 < iv.high
    assert iv.low > 1.0


@pytest.mark.parametrize(
    ("iv", "holds_when", "threshold", "expected"),
    [
        ((0.8, 0.7, 0.9), "below", 1.0, SUPPORTED),
        ((1.2, 1.1, 1.3), "below", 1.0, REJECTED),
        ((1.0, 0.9, 1.1), "below", 1.0, NOT_YET),
        ((1.0, 1.0, 1.1), "below", 1.0, REJECTED),  # at the threshold is not below it
        ((2.3, 2.2, 2.4), "above", 2.0, SUPPORTED),
        ((1.6, 1.5, 1.7), "above", 2.0, REJECTED),
        ((2.0, 1.9, 2.1), "above", 2.0, NOT_YET),
    ],
)
def test_decide(iv, holds_when, threshold, expected):
    assert decide(Interval(*iv, n=8), holds_when, threshold) == expected
