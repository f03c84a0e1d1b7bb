"""Robust summaries of latency samples.

Latency distributions are skewed (a scheduler hiccup costs 10x, nothing costs 0.1x), so we
report the median and percentiles rather than the mean, and judge stability by a
distribution-free confidence interval of the median: with n sorted samples, the order
statistics at ranks n/2 -+ 1.96*sqrt(n)/2 bracket the true median with ~95% probability
(the normal approximation to the binomial; Conover, *Practical Nonparametric Statistics*).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of pre-sorted values."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def median_ci95(sorted_values: Sequence[float]) -> tuple[float, float]:
    """Distribution-free ~95% confidence interval of the median (order statistics)."""
    n = len(sorted_values)
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half))
    hi = min(n - 1, math.ceil(n / 2 + half) - 1)
    return sorted_values[lo], sorted_values[hi]


@dataclass(frozen=True)
class LatencySummary:
    """Statistics of per-call latencies in milliseconds for one batch size."""

    batch_size: int
    repeats: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    ci95_low_ms: float
    ci95_high_ms: float
    throughput: float  # samples per second at the median latency

    @property
    def relative_ci(self) -> float:
        """Half-width of the median's 95% interval as a fraction of the median."""
        return (self.ci95_high_ms - self.ci95_low_ms) / 2 / self.median_ms


def summarize(samples_ms: Sequence[float], batch_size: int) -> LatencySummary:
    if not samples_ms:
        raise ValueError("no latency samples to summarize")
    s = sorted(samples_ms)
    n = len(s)
    mean = sum(s) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in s) / (n - 1)) if n > 1 else 0.0
    median = percentile(s, 50)
    lo, hi = median_ci95(s)
    return LatencySummary(
        batch_size=batch_size,
        repeats=n,
        median_ms=median,
        p10_ms=percentile(s, 10),
        p90_ms=percentile(s, 90),
        iqr_ms=percentile(s, 75) - percentile(s, 25),
        mean_ms=mean,
        std_ms=std,
        min_ms=s[0],
        max_ms=s[-1],
        ci95_low_ms=lo,
        ci95_high_ms=hi,
        throughput=batch_size / (median / 1000.0) if median > 0 else math.inf,
    )
