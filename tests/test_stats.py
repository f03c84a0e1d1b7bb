"""Latency statistics against numpy and hand-computed values; the stopping rule on fake clocks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from prunekit.measure._stats import median_ci95, percentile, summarize
from prunekit.measure.latency import TimingPolicy, time_calls


@pytest.mark.parametrize("q", [0, 10, 25, 50, 75, 90, 100])
def test_percentile_matches_numpy(q: float) -> None:
    values = sorted(np.random.default_rng(0).exponential(size=37).tolist())
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_median_ci_golden() -> None:
    values = list(range(100))  # n=100: ranks 50 -+ 9.8 -> indices 40 and 59
    assert median_ci95(values) == (40, 59)
    assert median_ci95([5.0]) == (5.0, 5.0)


def test_summarize_golden() -> None:
    s = summarize([4.0, 1.0, 2.0, 3.0, 10.0], batch_size=8)
    assert s.median_ms == 3.0
    assert s.min_ms == 1.0 and s.max_ms == 10.0
    assert s.mean_ms == 4.0
    assert s.std_ms == pytest.approx(np.std([4, 1, 2, 3, 10], ddof=1))
    assert s.iqr_ms == 2.0  # p75 = 4, p25 = 2
    assert s.throughput == pytest.approx(8 / 0.003)
    assert s.repeats == 5


def _fake_timer(samples: list[float]):  # type: ignore[no-untyped-def]
    it = itertools.cycle(samples)
    calls = []

    def timer(run):  # type: ignore[no-untyped-def]
        calls.append(1)
        return next(it)

    return timer, calls


def test_stops_once_the_median_is_stable() -> None:
    timer, calls = _fake_timer([1.0])  # perfectly stable
    policy = TimingPolicy(warmup_calls=3, warmup_s=0, min_repeats=10, min_time_s=0)
    samples, stable = time_calls(lambda: None, timer, policy)
    assert stable and len(samples) == 10
    assert len(calls) == 10 + 2  # warm-up stops after 2 calls once warmup_s has passed


def test_noisy_samples_run_to_the_repeat_limit_and_say_so() -> None:
    timer, _ = _fake_timer([1.0, 100.0, 3.0, 50.0, 7.0])
    policy = TimingPolicy(warmup_s=0, min_repeats=5, min_time_s=0, max_repeats=40)
    samples, stable = time_calls(lambda: None, timer, policy)
    assert not stable and len(samples) == 40


def test_policy_validation() -> None:
    from prunekit.errors import InputSpecError

    with pytest.raises(InputSpecError):
        TimingPolicy(min_repeats=0)
    with pytest.raises(InputSpecError):
        TimingPolicy(min_time_s=5, max_time_s=1)
