"""Find the global ratio that keeps a given fraction of the MACs (a bisection).

MACs fall monotonically (in steps) as the ratio grows, so bisection on the ratio converges;
every probe prunes a ``meta`` copy and counts its MACs, which costs no memory and no
arithmetic. The per-layer sensitivity planner (a later step of the workflow) replaces this
uniform allocation with one that spends the budget where it costs least accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from prunekit._tensors import named_tensors
from prunekit._utils import meta_copy
from prunekit.errors import PrunekitError
from prunekit.graph import ChannelGraph
from prunekit.inputs import ExampleInputs
from prunekit.measure.macs import count_macs
from prunekit.pruning.config import StructuredPruning
from prunekit.pruning.select import keep_count, plan_pruning, producers
from prunekit.pruning.surgery import ModelIndex, trial

MAX_RATIO = 0.95
TOLERANCE = 0.01  # of the original MACs


class TargetError(PrunekitError):
    """The requested budget cannot be reached by pruning this model."""


@dataclass(frozen=True)
class TargetSearch:
    config: StructuredPruning  # the uniform ratio, plus per-group overrides if refined
    kept_fraction: float
    probes: list[tuple[float, float]]  # (ratio, kept MACs fraction) of the bisection

    @property
    def ratio(self) -> float:
        return self.config.ratio


def search_ratio(
    model: nn.Module,
    example: ExampleInputs,
    graph: ChannelGraph,
    config: StructuredPruning,
    target: float,
) -> TargetSearch:
    """A config that keeps ``target`` of the MACs, within 1% of the original MACs.

    First a bisection on the uniform ratio; if channel counts are too coarse for it to land
    within 1% (small models, ``round_to``), single groups are then pruned one step further,
    greedily, choosing each time the step that lands closest to the target from above.
    """
    if not 0 < target <= 1:
        raise TargetError(f"a MACs target must be a fraction in (0, 1], got {target}")
    tensors = named_tensors(model)
    scores: dict[int, np.ndarray] = {}
    meta_inputs = example.to("meta")
    base = count_macs(model, example).total
    probes: list[tuple[float, float]] = []

    copies: list[tuple[nn.Module, ModelIndex]] = []  # one meta copy, made at the first probe

    def kept(candidate: StructuredPruning) -> float:
        if not copies:
            copy = meta_copy(model)
            if copy is None:
                raise TargetError("the model cannot be copied to search for a ratio; use --ratio")
            copies.append((copy, ModelIndex.of(copy)))
        copy, index = copies[0]
        plans = plan_pruning(graph, tensors, candidate, scores)
        with trial(copy, [(p.group, p.remove) for p in plans], index) as pruned:
            return count_macs(pruned, meta_inputs).total / base

    def at(ratio: float) -> float:
        fraction = kept(replace(config, ratio=ratio))
        probes.append((ratio, fraction))
        return fraction

    if target >= 1:
        return TargetSearch(replace(config, ratio=0.0), 1.0, probes)
    lo, hi = 0.0, MAX_RATIO
    floor = at(hi)
    if floor > target + TOLERANCE:
        raise TargetError(
            f"cannot keep only {target:.0%} of the MACs: pruning every group by {MAX_RATIO:.0%} "
            f"still keeps {floor:.1%} (layers that cannot be pruned hold the rest)"
        )
    for _ in range(30):
        mid = (lo + hi) / 2
        if at(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-4:
            break
    best = min(probes, key=lambda p: abs(p[1] - target))
    if abs(best[1] - target) <= TOLERANCE:
        return TargetSearch(replace(config, ratio=best[0]), best[1], probes)
    return _refine(graph, tensors, replace(config, ratio=lo), kept, target, probes)


def _refine(
    graph: ChannelGraph,
    tensors: dict[str, torch.Tensor],
    config: StructuredPruning,
    kept: Callable[[StructuredPruning], float],
    target: float,
    probes: list[tuple[float, float]],
) -> TargetSearch:
    """Greedy per-group steps from the largest uniform ratio that stays above the target."""
    current = kept(config)
    overrides = dict(config.ratios)
    groups = [g for g in graph.prunable if not any(config.is_ignored(m) for m in g.modules)]
    while abs(current - target) > TOLERANCE:
        best: tuple[float, dict[str, float]] | None = None
        for group in groups:
            names = producers(group, tensors)
            ratio = config.ratio_for(names) if names[0] not in overrides else overrides[names[0]]
            keep = keep_count(group.size, ratio, config.round_to)
            step = config.round_to if group.size >= config.round_to else 1
            if keep - step < 1:
                continue
            trial = {**overrides, names[0]: (group.size - (keep - step)) / group.size}
            fraction = kept(replace(config, ratios=trial))
            if fraction >= target - TOLERANCE and (
                best is None or abs(fraction - target) < abs(best[0] - target)
            ):
                best = (fraction, trial)
        if best is None or abs(best[0] - target) >= abs(current - target):
            break
        current, overrides = best
    if abs(current - target) > TOLERANCE:
        raise TargetError(
            f"cannot keep {target:.0%} of the MACs within 1%: the closest reachable is {current:.1%}; "
            "the model's channel counts (or --round-to) are too coarse"
        )
    return TargetSearch(replace(config, ratios=overrides), current, probes)
