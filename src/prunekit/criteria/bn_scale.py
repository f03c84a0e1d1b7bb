"""Normalisation scale: the magnitude of the per-channel scale ``gamma`` of a norm layer.

A normalisation layer multiplies each normalised channel by a learned ``gamma``; a channel
whose ``gamma`` is near zero contributes (up to its bias) a constant, so ``|gamma|`` ranks
channels. Network Slimming (Liu et al., "Learning Efficient Convolutional Networks through
Network Slimming", ICCV 2017) trains with an L1 penalty on every ``gamma`` so that this
ranking becomes sharp, and compares the values of all layers on one scale.

Score of an atom: the sum of ``|gamma|`` over every normalisation weight of the group that
the atom owns (BatchNorm, SyncBatchNorm, InstanceNorm, GroupNorm, LayerNorm, RMSNorm). The
values are not rescaled: a group with one BatchNorm gets exactly ``|gamma|``, and a group
whose channels pass through several (a residual stream) adds them up, as Network Slimming
treats every ``gamma`` on the same scale.

A group with no normalisation weight (a layer without BatchNorm, a norm with
``affine=False``) cannot be scored this way: it falls back to L1 group magnitude and is
listed in the result's ``fallback`` with the reason.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from prunekit.criteria._common import (
    GroupScores,
    ScoreRequest,
    is_norm,
    model_tensors,
    module_of,
)
from prunekit.graph import ChannelGraph

__all__ = ["bn_scale_scores"]


def bn_scale_scores(model: nn.Module, graph: ChannelGraph) -> GroupScores:
    """``sum |gamma|`` per atom over the group's normalisation weights; L1 fallback otherwise."""
    tensors = model_tensors(model, graph)
    modules = dict(model.named_modules())
    scores = GroupScores("bn_scale")
    cache: dict[int, torch.Tensor] = {}
    for group in graph.prunable:
        total = np.zeros(group.size)
        found = False
        for m in group.members:
            module = modules.get(module_of(m.owner))
            if m.is_buffer or not m.owner.endswith(".weight") or module is None:
                continue
            if not is_norm(module):
                continue
            gamma = tensors[m.owner].detach().float().abs()
            if gamma.dim() != 1:  # a norm over several dimensions: not one scale per channel
                continue
            found = True
            total += np.bincount(m.atom, weights=gamma.cpu().numpy(), minlength=group.size)
        if found:
            scores[group.id] = total
        else:
            scores.use_magnitude(
                group,
                tensors,
                "no normalisation-layer weight among the group's tensors: scored by L1 magnitude",
                cache,
            )
    return scores


def score(model: nn.Module, graph: ChannelGraph, request: ScoreRequest) -> GroupScores:
    """The registry's entry for ``bn_scale``."""
    return bn_scale_scores(model, graph)
