"""Did the MACs cut become a latency cut? Measure both models on the real backend and say so.

The ideal speedup of a pruned model is ``dense MACs / pruned MACs`` (``1 / (1 - cut)``). What
a backend delivers is often much less -- per-layer overheads at batch 1, memory-bound layers,
kernels tuned for channel counts that are multiples of 8 -- the most common complaint about
pruning toolkits. ``verify_speedup`` measures the dense and the pruned model with the same
backend and threads, in interleaved rounds (``prunekit.measure.compare``: the speedup is the
median of per-round ratios, so a drift of the machine's speed affects both alike), and
reports the measured speedup next to the ideal, flagging every batch size where it falls
below ``warn_below`` of it.

Each row also keeps the spread of the per-round speedups: a row is ``stable`` when the
middle of those ratios (the 95% interval of their median, order statistics) lies within
``STABLE_WITHIN`` of the median; a report shows an unstable median as such instead of
presenting a noisy figure as a fact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from prunekit.inputs import InputSpec
from prunekit.measure._environment import environment
from prunekit.measure._stats import median_ci95
from prunekit.measure.compare import ROUND_POLICY, compare_latency
from prunekit.measure.latency import TimingPolicy, resolve_device
from prunekit.measure.macs import count_macs

WARN_BELOW = 0.8
STABLE_MIN_ROUNDS = 5  # min..max of 5 rounds covers the median 94% of the time
STABLE_WITHIN = 0.05  # half-width of the median speedup's 95% interval, relative


@dataclass
class SpeedupRow:
    batch_size: int
    dense_ms: float
    pruned_ms: float
    ideal: float
    speedup: float | None = None  # median of per-round ratios; else dense_ms / pruned_ms
    ratios: list[float] = field(default_factory=list)  # per-round speedups

    @property
    def stable(self) -> bool | None:
        """The median speedup's 95% interval within ``STABLE_WITHIN`` of it (None: fewer than
        ``STABLE_MIN_ROUNDS`` rounds, where the order-statistic interval is not a 95% one:
        the range of 1 round is 0, and of 3 rounds it covers the median 75% of the time)."""
        if len(self.ratios) < STABLE_MIN_ROUNDS:
            return None
        low, high = median_ci95(sorted(self.ratios))
        return (high - low) / 2 <= STABLE_WITHIN * self.measured

    @property
    def measured(self) -> float:
        return self.speedup if self.speedup is not None else self.dense_ms / self.pruned_ms

    @property
    def of_ideal(self) -> float:
        return self.measured / self.ideal


@dataclass
class SpeedupReport:
    backend: str
    threads: int
    dense_macs: int
    pruned_macs: int
    rows: list[SpeedupRow] = field(default_factory=list)
    warn_below: float = WARN_BELOW
    device: str = "cpu"
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def ideal(self) -> float:
        return self.dense_macs / self.pruned_macs if self.pruned_macs else float("inf")

    def findings(self) -> list[str]:
        """One plain sentence per batch size where the latency gain lags the MACs gain."""
        out = []
        for r in self.rows:
            if r.of_ideal < self.warn_below:
                out.append(
                    f"batch {r.batch_size}: {self.backend} runs the pruned model only "
                    f"{r.measured:.2f}x faster although it has {r.ideal:.2f}x fewer MACs "
                    f"({r.of_ideal:.0%} of the ideal): time here goes to work MACs do not count "
                    "(per-layer overheads, memory-bound layers, kernel choices); try a "
                    "latency-aware plan (prunekit profile + plan --lut) or another backend"
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, raw in zip(self.rows, data["rows"], strict=True):
            raw["measured"] = row.measured
            raw["of_ideal"] = row.of_ideal
            raw["stable"] = row.stable
            raw["speedup_range"] = [min(row.ratios), max(row.ratios)] if row.ratios else None
            raw["dense_throughput"] = 1000 * row.batch_size / row.dense_ms
            raw["pruned_throughput"] = 1000 * row.batch_size / row.pruned_ms
        data["ideal"] = self.ideal
        data["findings"] = self.findings()
        return data

    def table(self) -> str:
        lines = [
            f"{'batch':>5} {'dense ms':>10} {'pruned ms':>10} {'speedup':>8} {'ideal':>6} {'of ideal':>8}"
        ]
        for r in self.rows:
            lines.append(
                f"{r.batch_size:>5} {r.dense_ms:>10.3f} {r.pruned_ms:>10.3f} {r.measured:>7.2f}x "
                f"{r.ideal:>5.2f}x {r.of_ideal:>8.0%}"
                + ("  (unstable)" if r.stable is False else "")
            )
        return "\n".join(lines)


def verify_speedup(
    dense: nn.Module,
    pruned: nn.Module,
    spec: InputSpec,
    batch_sizes: Sequence[int] = (1, 32),
    *,
    backend: str = "eager",
    device: str = "cpu",
    threads: int | None = None,
    policy: TimingPolicy | None = None,
    warn_below: float = WARN_BELOW,
    rounds: int = 5,
) -> SpeedupReport:
    """``policy`` times one model's share of a round (default ``compare.ROUND_POLICY``)."""
    example = spec.make(1)
    dense_macs = count_macs(dense, example).total
    pruned_macs = count_macs(pruned, example).total
    dev = resolve_device(device)
    report = SpeedupReport(backend, threads or 0, dense_macs, pruned_macs, warn_below=warn_below,
                           device=dev.type, environment=environment(dev))  # fmt: skip
    comparisons = compare_latency({"dense": dense, "pruned": pruned}, spec, batch_sizes,
                                  backend=backend, device=device, threads=threads, rounds=rounds,
                                  policy=policy or ROUND_POLICY)  # fmt: skip
    for c in comparisons:
        report.threads = c.threads
        report.rows.append(SpeedupRow(c.batch_size, c.median_ms("dense"), c.median_ms("pruned"),
                                      report.ideal, c.speedup("pruned"),
                                      c.ratios("pruned")))  # fmt: skip
    return report
