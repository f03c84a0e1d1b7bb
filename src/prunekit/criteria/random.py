"""Random scores: a baseline every other criterion should beat.

Each atom gets a number drawn uniformly from [0, 1). The generator of a group is seeded with
``(seed, group.id)``, so the scores of a group depend only on the seed and the group, not on
which other groups are scored or in what order; the same seed gives the same scores.
Random channel selection is a known, surprisingly strong baseline for structured pruning
followed by fine-tuning (Mittal et al., "Studying the Plasticity in Deep Convolutional Neural
Networks using Random Pruning", 2019; Li et al., "Revisiting Random Channel Pruning for
Neural Network Compression", CVPR 2022).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from prunekit.criteria._common import CriterionError, GroupScores, ScoreRequest
from prunekit.graph import ChannelGraph

__all__ = ["random_scores"]


def random_scores(graph: ChannelGraph, seed: int = 0) -> GroupScores:
    """Uniform [0, 1) scores per atom, reproducible from ``seed`` (a non-negative integer)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CriterionError(f"the random seed must be a non-negative integer, got {seed!r}")
    scores = GroupScores("random")
    for group in graph.prunable:
        rng = np.random.default_rng([int(seed), group.id])
        scores[group.id] = rng.random(group.size)
    return scores


def score(model: nn.Module, graph: ChannelGraph, request: ScoreRequest) -> GroupScores:
    """The registry's entry for ``random``."""
    return random_scores(graph, request.seed)
