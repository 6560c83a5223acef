"""Seeded bootstrap intervals for the ratios the ledger compares with a threshold.

Why bootstrap: per-prompt ratios (tiered/dense TTFT, peak memory, ...) are few (8 on the CPU
default, 30 in the study) and skewed; their geometric mean is the natural summary of a ratio, and
a percentile bootstrap over the per-prompt log-ratios needs no distributional assumption.  The
generator is seeded from the claim file, so the same data always gives the same interval (and the
same verdict).  Per-request latencies of two serving arms are paired by request (both arms serve the
same requests): the bootstrap resamples requests and recomputes the ratio of the two arms'
quantiles; samples that cannot be paired are resampled arm by arm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided ``level`` interval over ``n`` units."""

    point: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 3, suffix: str = "x") -> str:
        """``1.95x [1.93, 1.97]``: three significant digits (what 8-30 prompts support)."""
        return f"{sig(self.point, digits)}{suffix} [{sig(self.low, digits)}, {sig(self.high, digits)}]"


def p50_ratio_interval(a: Any, b: Any, n: int) -> Interval:
    """``a / b`` at p50 for two rows of ``cache_ops.parquet``, bounded by dividing their p50s'
    order-statistic bounds (``us_p50_lo``, ``us_p50_hi``; >= 95% jointly, bcr.prefix.bench)."""
    return Interval(
        float(a["us_p50"]) / float(b["us_p50"]),
        float(a["us_p50_lo"]) / float(b["us_p50_hi"]),
        float(a["us_p50_hi"]) / float(b["us_p50_lo"]),
        n,
    )


def sig(v: float, digits: int = 3) -> str:
    """``v`` to ``digits`` significant digits in fixed notation: 2.00, 0.995, 1.01, 1950."""
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    decimals = max(0, digits - 1 - mag)
    rounded = round(v, decimals)
    if rounded and math.floor(math.log10(abs(rounded))) > mag:  # 9.996 -> 10.0: one decimal fewer
        decimals = max(0, decimals - 1)
    return f"{v:.{decimals}f}"


def _clean(values: np.ndarray | list[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr) & (arr > 0)]


def _resampled(
    resamples: int, seed: int, width: int, stats: Callable[[np.random.Generator, int], np.ndarray]
) -> np.ndarray:
    """``resamples`` bootstrap statistics from one seeded generator; ``stats(rng, k)`` gives ``k`` of
    them, drawn in chunks of about two million resampled values (``width`` per statistic)."""
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    chunk = max(1, 2_000_000 // width)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        out[start:stop] = stats(rng, stop - start)
    return out


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    """The two-sided ``level`` percentile interval of bootstrap statistics."""
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def geomean(values: np.ndarray | list[float]) -> float:
    arr = _clean(values)
    return float(np.exp(np.log(arr).mean())) if len(arr) else math.nan


def geomean_interval(
    ratios: np.ndarray | list[float], *, level: float, resamples: int, seed: int
) -> Interval:
    """Geometric mean of positive ratios with a percentile-bootstrap interval (log scale, seeded)."""
    logs = np.log(_clean(ratios))
    n = len(logs)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    point = float(np.exp(logs.mean()))
    if n == 1:
        return Interval(point, point, point, 1)
    means = _resampled(resamples, seed, n, lambda rng, k: logs[rng.integers(0, n, size=(k, n))].mean(axis=1))
    low, high = _percentiles(means, level)
    return Interval(point, float(np.exp(low)), float(np.exp(high)), n)


def quantile_ratio_interval(
    sample: np.ndarray | list[float],
    baseline: np.ndarray | list[float],
    *,
    q: float,
    level: float,
    resamples: int,
    seed: int,
) -> Interval:
    """``quantile(sample, q) / quantile(baseline, q)`` with an unpaired bootstrap interval (seeded).

    ``n`` is the smaller of the two sample sizes: the one that limits what the comparison can show.
    """
    a, b = _clean(sample), _clean(baseline)
    n = min(len(a), len(b))
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    point = float(np.quantile(a, q) / np.quantile(b, q))

    def ratios(rng: np.random.Generator, k: int) -> np.ndarray:
        qa = np.quantile(a[rng.integers(0, len(a), size=(k, len(a)))], q, axis=1)
        qb = np.quantile(b[rng.integers(0, len(b), size=(k, len(b)))], q, axis=1)
        return qa / qb

    low, high = _percentiles(_resampled(resamples, seed, max(len(a), len(b)), ratios), level)
    return Interval(point, float(low), float(high), n)


def paired_quantile_ratio_interval(
    sample: np.ndarray | list[float],
    baseline: np.ndarray | list[float],
    *,
    q: float,
    level: float,
    resamples: int,
    seed: int,
) -> Interval:
    """``quantile(sample, q) / quantile(baseline, q)`` where ``sample[i]`` and ``baseline[i]`` are the
    same unit (one request served by two arms): the bootstrap resamples units, keeping pairs whole.

    Pairs where either value is missing or not positive are dropped; ``n`` is the pairs kept.
    """
    a, b = np.asarray(sample, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    a, b = a[keep], b[keep]
    n = len(a)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    point = float(np.quantile(a, q) / np.quantile(b, q))

    def ratios(rng: np.random.Generator, k: int) -> np.ndarray:
        idx = rng.integers(0, n, size=(k, n))  # the same units for both arms: pairs stay whole
        return np.quantile(a[idx], q, axis=1) / np.quantile(b[idx], q, axis=1)

    low, high = _percentiles(_resampled(resamples, seed, n, ratios), level)
    return Interval(point, float(low), float(high), n)


def exact_rate_interval(k: int, n: int, level: float = 0.95) -> Interval:
    """Clopper–Pearson interval of an exact rate ``k / n`` (exact binomial; conservative at small n).

    8/8 exact gives [0.631, 1]: all exact on 8 prompts still allows a true rate of 63%.
    """
    from scipy.stats import beta

    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    alpha = 1.0 - level
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return Interval(k / n, low, high, n)


def rate_text(k: int, n: int, level: float = 0.95) -> str:
    """``8/8 [0.631, 1]``: the count and its Clopper–Pearson interval."""
    iv = exact_rate_interval(k, n, level)
    return f"{k}/{n} [{sig(iv.low)}, {sig(iv.high)}]" if n else "0/0"


def discordant_p(wins: int, losses: int) -> float:
    """Exact one-sided McNemar test on paired binary outcomes: the probability of at least ``wins``
    of the ``wins + losses`` discordant pairs going one way if each went either way with 1/2 (the
    prompts both arms get right, or both wrong, say nothing about which is better).  1.0 at no
    discordant pair; 3 of 3 gives 0.125, 5 of 5 gives 0.031."""
    from scipy.stats import binom

    n = wins + losses
    return 1.0 if n == 0 else float(binom.sf(wins - 1, n, 0.5))
