"""Interleaved latency comparison of several models: speedups that a drifting machine cannot fake.

On a shared machine the speed drifts over seconds to minutes (other tenants, frequency
scaling, thermal limits). Timing model A for ten seconds and then model B compares A's good
minute with B's bad one; on this project's 2-core VMs such back-to-back runs of the *same*
model differ by 7-70% at batch 32. Here every model is prepared first (export, sessions,
parity checks: untimed), then timed in ``rounds``: each round times every model briefly, in an
order that rotates from round to round. The speedup of a model is the median over rounds of
the per-round ratio ``reference_ms / model_ms``, so a slowdown that hits one round hits both
sides of that round's ratio, and one disturbed round cannot move the median.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import InputSpecError
from prunekit.inputs import InputSpec, TensorSpec
from prunekit.measure.backends import backend_class
from prunekit.measure.latency import (
    TimingPolicy,
    intra_op_threads,
    resolve_device,
    time_calls,
    timer_for,
)

# One model's share of a round: long enough for a stable median of a few calls, short
# enough that the machine's speed barely changes within the round.
ROUND_POLICY = TimingPolicy(warmup_calls=2, warmup_s=0.0, min_repeats=3, min_time_s=0.3,
                            max_repeats=200, max_time_s=1.5, target_rel_ci=0.05)  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """Per-round median latencies (ms) of every model at one batch size."""

    backend: str
    batch_size: int
    threads: int
    reference: str
    rounds_ms: dict[str, list[float]] = field(default_factory=dict)

    def median_ms(self, name: str) -> float:
        return statistics.median(self.rounds_ms[name])

    def ratios(self, name: str) -> list[float]:
        """Per round, how many times faster ``name`` ran than the reference."""
        return [r / m for r, m in zip(self.rounds_ms[self.reference], self.rounds_ms[name],
                                      strict=True)]  # fmt: skip

    def speedup(self, name: str) -> float:
        """Median over rounds of the per-round speedup against the reference."""
        return statistics.median(self.ratios(name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "reference": self.reference,
            "median_ms": {name: self.median_ms(name) for name in self.rounds_ms},
            "speedup": {name: self.speedup(name) for name in self.rounds_ms},
            "speedup_range": {
                name: [min(self.ratios(name)), max(self.ratios(name))] for name in self.rounds_ms
            },
            "rounds_ms": self.rounds_ms,
        }


def round_orders(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The timing order of each round: the list rotated by one more place each round, so no
    model is always first (right after another model's run) or always last."""
    n = len(names)
    return [[names[(r + i) % n] for i in range(n)] for r in range(rounds)]


def compare_latency(
    models: Mapping[str, nn.Module],
    inputs: InputSpec | torch.Tensor,
    batch_sizes: Sequence[int] = (1,),
    *,
    reference: str | None = None,
    backend: str = "eager",
    device: str | torch.device = "cpu",
    threads: int | None = None,
    rounds: int = 7,
    policy: TimingPolicy = ROUND_POLICY,
) -> list[Comparison]:
    """Time ``models`` interleaved (module docstring), one ``Comparison`` per batch size.

    ``reference`` (default: the first model) is what speedups are relative to. Models are put
    in eval mode and on ``device``; their train/eval modes are restored afterwards.
    """
    if not models:
        raise InputSpecError("compare_latency needs at least one model")
    names = list(models)
    reference = names[0] if reference is None else reference
    if reference not in models:
        raise InputSpecError(f"reference {reference!r} is not one of the models: {names}")
    if rounds < 1 or not batch_sizes:
        raise InputSpecError("need at least one round and one batch size")
    if threads is not None and threads < 1:
        raise InputSpecError(f"threads must be a positive integer, got {threads}")
    spec: InputSpec = (
        TensorSpec((tuple(inputs.shape),)) if isinstance(inputs, torch.Tensor) else inputs
    )
    dev = resolve_device(device)
    timer = timer_for(dev)
    n_threads = threads or torch.get_num_threads()
    modes = {name: model.training for name, model in models.items()}
    runtimes: dict[str, Any] = {}
    results = []
    try:
        with intra_op_threads(n_threads):
            for name, model in models.items():
                model.eval().to(dev)
                runtimes[name] = backend_class(backend)(model, dev, n_threads)
            for batch in batch_sizes:
                example = spec.make(batch).to(dev, torch.float32)
                runs = {name: rt.runner(example, batch) for name, rt in runtimes.items()}
                timed: dict[str, list[float]] = {name: [] for name in names}
                for order in round_orders(names, rounds):
                    for name in order:
                        samples, _ = time_calls(runs[name], timer, policy)
                        timed[name].append(statistics.median(samples))
                results.append(Comparison(backend, batch, n_threads, reference, timed))
    finally:
        for runtime in runtimes.values():
            runtime.close()
        for name, model in models.items():
            model.train(modes[name])
    return results
