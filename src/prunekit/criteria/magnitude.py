"""Group magnitude: the L1 or L2 norm of every slice an atom owns, summed over the group.

For one (tensor, dimension) of a group and an index ``i`` along that dimension, the L1 score
is ``sum |w|`` and the L2 score ``sqrt(sum w^2)`` over the slice of the tensor at ``i``.
Slices of the same atom are added up, each (tensor, dimension) is divided by its mean over the
atoms (so that no layer dominates because it is larger), and the results are summed per atom.
Buffers (running statistics) are left out. This is the group-level norm criterion of Fang et
al., "DepGraph: Towards Any Structural Pruning" (CVPR 2023); per layer it is the filter-norm
criterion of Li et al., "Pruning Filters for Efficient ConvNets" (ICLR 2017).

The computation lives in ``prunekit.criteria._norms`` (the default selection of
``prunekit.pruning`` uses it too); this module exposes it as a criterion.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.criteria._common import CriterionError, GroupScores, ScoreRequest, model_tensors
from prunekit.criteria._norms import atom_scores, per_index_norm
from prunekit.graph import ChannelGraph

__all__ = ["KINDS", "atom_scores", "magnitude_scores", "per_index_norm"]

KINDS = ("l1", "l2")


def magnitude_scores(model: nn.Module, graph: ChannelGraph, kind: str = "l1") -> GroupScores:
    """L1 (``kind="l1"``) or L2 group magnitude of every prunable group of ``graph``."""
    if kind not in KINDS:
        raise CriterionError(f"unknown magnitude {kind!r}; choose one of: {', '.join(KINDS)}")
    tensors = model_tensors(model, graph)
    cache: dict[int, torch.Tensor] = {}
    scores = GroupScores(kind)
    for group in graph.prunable:
        scores[group.id] = atom_scores(group, tensors, kind, cache)
    return scores


def score(model: nn.Module, graph: ChannelGraph, request: ScoreRequest) -> GroupScores:
    """The registry's entry for ``l1`` and ``l2``."""
    return magnitude_scores(model, graph, request.criterion)
