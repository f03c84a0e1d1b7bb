"""Choose which atoms of each group to remove: ratio, overrides, rounding, safety floors."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from prunekit.criteria.magnitude import atom_scores
from prunekit.graph import ChannelGraph, Group
from prunekit.pruning.config import PruneConfigError, StructuredPruning


@dataclass
class GroupPlan:
    group: Group
    ratio: float
    remove: np.ndarray  # group-local atom ids

    @property
    def kept(self) -> int:
        return self.group.size - len(self.remove)


def producers(group: Group, tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Modules whose weight *rows* are this group's channels (conv/linear outputs, heads)."""
    names = {
        m.owner.rpartition(".")[0]
        for m in group.members
        if m.dim == 0 and not m.consumer.any() and not m.is_buffer and tensors[m.owner].dim() >= 2
    }
    return sorted(names) or group.modules


def keep_count(n: int, ratio: float, round_to: int) -> int:
    keep = n - math.floor(ratio * n + 1e-9)
    if round_to > 1 and n >= round_to:
        keep = min(n, math.ceil(keep / round_to) * round_to)
    return max(keep, 1)


def plan_group(
    group: Group, count: int, scores: np.ndarray | None = None, ratio: float = 0.0
) -> GroupPlan:
    """Remove up to ``count`` atoms, least important first (``scores``; None: any order).

    Blocked atoms are never chosen, and every (tensor, dimension) keeps at least one index,
    so no layer is ever emptied (e.g. one branch of a concatenation).
    """
    if count <= 0 or not group.prunable:
        return GroupPlan(group, ratio, np.zeros(0, dtype=np.int64))
    order = np.argsort(scores, kind="stable") if scores is not None else np.arange(group.size)
    order = order[group.removable[order]]
    counts = group.counts()
    if (counts > 0).all():  # every layer holds every atom: no layer can be emptied
        return GroupPlan(group, ratio, np.sort(order[:count]))
    left = counts.sum(axis=1)
    chosen: list[int] = []
    for a in order:
        if len(chosen) == count:
            break
        if np.any(left - counts[:, a] < 1):
            continue
        left -= counts[:, a]
        chosen.append(int(a))
    return GroupPlan(group, ratio, np.array(sorted(chosen), dtype=np.int64))


def plan_pruning(
    graph: ChannelGraph,
    tensors: Mapping[str, torch.Tensor],
    config: StructuredPruning,
    scores: dict[int, np.ndarray] | None = None,
    keep: Mapping[int, int] | None = None,
) -> list[GroupPlan]:
    """One plan per prunable group with a non-zero ratio. ``scores`` caches importance.

    ``keep`` (group id -> channels to keep, e.g. from ``prunekit.planning``) overrides the
    config's ratio for those groups; the count is kept exactly (no rounding)."""
    plans = []
    magnitudes: dict[int, torch.Tensor] = {}
    for group in graph.prunable:
        if any(config.is_ignored(m) for m in group.modules):
            continue
        if keep is not None and group.id in keep:
            kept = keep[group.id]
            if not 1 <= kept <= group.size:
                raise PruneConfigError(
                    f"group {group.name}: cannot keep {kept} of its {group.size} channels"
                )
            ratio = 1 - kept / group.size
        else:
            ratio = config.ratio_for(producers(group, tensors))
        if ratio <= 0:
            continue
        if scores is None or group.id not in scores:
            group_scores = atom_scores(group, tensors, config.importance, magnitudes)
            if scores is not None:
                scores[group.id] = group_scores
        else:
            group_scores = scores[group.id]
        if keep is not None and group.id in keep:
            count = group.size - keep[group.id]
        else:
            count = group.size - keep_count(group.size, ratio, config.round_to)
        plans.append(plan_group(group, count, group_scores, ratio))
    return plans
