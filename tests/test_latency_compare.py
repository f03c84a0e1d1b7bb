"""prunekit.measure.compare: interleaved rounds and the median-of-ratios speedup (no timing
is asserted: only what is measured, in which order, and how the figures are derived)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import InputSpecError
from prunekit.measure import compare
from prunekit.measure.compare import Comparison, compare_latency, round_orders
from prunekit.measure.latency import TimingPolicy

FAST = TimingPolicy(warmup_calls=1, warmup_s=0.0, min_repeats=1, min_time_s=0.0,
                    max_repeats=1, max_time_s=0.0)  # fmt: skip


def test_round_orders_rotate_so_no_model_is_always_first() -> None:
    orders = round_orders(["a", "b", "c"], 4)
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert {o[0] for o in orders[:3]} == {"a", "b", "c"}


def test_speedup_is_the_median_of_per_round_ratios() -> None:
    # round 2 ran on a machine twice as slow for both models: the per-round ratio is unchanged,
    # whereas dividing the separate medians would mix rounds
    c = Comparison("eager", 1, 2, "dense", {"dense": [10.0, 20.0, 10.0, 50.0],
                                            "pruned": [5.0, 10.0, 6.0, 10.0]})  # fmt: skip
    assert c.ratios("pruned") == [2.0, 2.0, 10 / 6, 5.0]
    assert c.speedup("pruned") == pytest.approx(2.0)
    assert c.speedup("dense") == 1.0
    assert c.median_ms("dense") == 15.0
    record = c.to_dict()
    assert record["speedup"]["pruned"] == pytest.approx(2.0)
    assert record["speedup_range"]["pruned"] == [pytest.approx(10 / 6), 5.0]


class _Counting(nn.Module):
    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = name, log
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        return self.linear(x)


def test_models_are_timed_interleaved_and_their_modes_restored() -> None:
    log: list[str] = []
    a, b = _Counting("a", log), _Counting("b", log)
    a.train()
    b.eval()
    result = compare_latency({"a": a, "b": b}, torch.randn(1, 4), [1, 3], rounds=3,
                             policy=FAST)  # fmt: skip
    assert [c.batch_size for c in result] == [1, 3]
    assert all(len(c.rounds_ms["a"]) == 3 and c.reference == "a" for c in result)
    assert all(t > 0 for c in result for times in c.rounds_ms.values() for t in times)
    # one warm-up and one timed call per model and round, in rotating order
    assert log[:12] == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert a.training and not b.training


def test_bad_requests_are_refused() -> None:
    model = nn.Linear(4, 2)
    with pytest.raises(InputSpecError, match="reference 'x'"):
        compare_latency({"m": model}, torch.randn(1, 4), reference="x")
    with pytest.raises(InputSpecError, match="at least one model"):
        compare_latency({}, torch.randn(1, 4))
    with pytest.raises(InputSpecError, match="round"):
        compare_latency({"m": model}, torch.randn(1, 4), rounds=0)
    assert compare.ROUND_POLICY.max_time_s <= 2.0  # a round stays short
