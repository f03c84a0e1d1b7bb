"""Activation statistics on calibration data: mean activation and APoZ.

A channel that is rarely active carries little information to the next layer. Two statistics
are gathered with forward hooks while the model runs (eval mode, no gradients) on the
calibration batches:

* **mean activation** (``mean_activation``): the mean of ``max(y, 0)`` over every element of
  the channel (batch and spatial positions / tokens, all batches together).
* **APoZ**, the average percentage of zeros (Hu et al., "Network Trimming: A Data-Driven
  Neuron Pruning Approach towards Efficient Deep Architectures", 2016): the fraction of the
  channel's elements for which ``max(y, 0)`` is zero. A high APoZ means an unimportant
  channel, so the score is ``1 - APoZ``, the fraction of positive elements: higher = more
  important, like every other criterion.

Which output ``y`` is observed: if the group contains normalisation layers (BatchNorm,
InstanceNorm, GroupNorm, LayerNorm, RMSNorm), their outputs; otherwise the outputs of the
layers that produce the group's channels (convolutions, linear layers, embeddings). That is
the *pre-activation* of the channel, and the ReLU is applied here, which assumes that a ReLU
(or a function with the same zero set and similar positive part) follows. For GELU, SiLU or
no activation at all the statistics are a proxy. Channel dimension: 1 for convolutions and
BatchNorm / InstanceNorm / GroupNorm outputs, the last one for Linear, Embedding, LayerNorm.

An atom that owns several channels of a layer (an attention head) gets the mean of its
channels' statistics; when several layers are observed (a residual stream), the statistics
of the layers that hold the atom are averaged, unscaled (with one layer the score is exactly
that layer's statistic). A group none of whose layers can be observed, or whose layers did not
run, is scored by L1 magnitude and listed in the result's ``fallback``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.criteria._common import (
    CriterionError,
    GroupScores,
    ScoreRequest,
    accumulation_dtype,
    calibration_batches,
    channel_member,
    is_norm,
    model_device,
    model_tensors,
    module_of,
    output_channel_dim,
)
from prunekit.graph import ChannelGraph, Group, Member

__all__ = ["STATISTICS", "activation_scores"]

STATISTICS = ("mean_activation", "apoz")


@dataclass
class _Stats:
    """Per-channel sums over every output of one module."""

    channels: int
    positive: torch.Tensor | None = None  # sum of max(y, 0)
    zeros: torch.Tensor | None = None  # count of max(y, 0) == 0
    count: int = 0  # elements per channel seen
    mismatch: list[str] = field(default_factory=list)  # the first problem seen, if any


def _observed(group: Group, modules: dict[str, nn.Module]) -> list[tuple[str, Member]]:
    """(module, member mapping its output channels to atoms) for the layers to observe."""
    names = sorted({module_of(m.owner) for m in group.members})
    norms = [n for n in names if n in modules and is_norm(modules[n])]
    candidates = norms or [
        n
        for n in names
        if n in modules
        and not is_norm(modules[n])
        and any(
            module_of(m.owner) == n and not m.is_buffer and not m.consumer.any()
            for m in group.members
        )
    ]
    found = []
    for name in candidates:
        member = channel_member(group, name)
        if member is not None:
            found.append((name, member))
    return found


def _hook(stats: _Stats, dtype: torch.dtype) -> Any:
    def hook(module: nn.Module, args: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return
        cdim = output_channel_dim(module, out)
        if cdim is None or out.dim() == 0 or out.shape[cdim] != stats.channels:
            if not stats.mismatch:
                got = list(out.shape) if isinstance(out, torch.Tensor) else []
                stats.mismatch.append(f"output {got} has no dimension of {stats.channels} channels")
            return
        y = out.detach()
        others = [d for d in range(y.dim()) if d != cdim]
        positive = y.clamp_min(0).float()
        pos = positive.sum(dim=others).to(dtype) if others else positive.to(dtype)
        zer = (y <= 0).sum(dim=others).to(dtype) if others else (y <= 0).to(dtype)
        if stats.positive is None or stats.zeros is None:
            stats.positive, stats.zeros = pos, zer
        else:
            stats.positive += pos
            stats.zeros += zer
        stats.count += y.numel() // stats.channels

    return hook


def activation_scores(
    model: nn.Module,
    graph: ChannelGraph,
    calibration: Iterable[Any] | None,
    statistic: str = "apoz",
) -> GroupScores:
    """``mean_activation`` (mean of ReLU'd outputs) or ``apoz`` (1 - fraction of zeros) per
    atom of every prunable group, from forward passes over ``calibration`` (targets, if the
    batches carry them, are ignored)."""
    if statistic not in STATISTICS:
        raise CriterionError(
            f"unknown activation statistic {statistic!r}; choose one of: {', '.join(STATISTICS)}"
        )
    tensors = model_tensors(model, graph)
    modules = dict(model.named_modules())
    device = model_device(model)
    dtype = accumulation_dtype(device)
    plan = {group.id: _observed(group, modules) for group in graph.prunable}
    stats: dict[str, _Stats] = {}
    for observed in plan.values():
        for name, member in observed:
            stats.setdefault(name, _Stats(len(member.atom)))
    was_training = model.training
    handles = [modules[n].register_forward_hook(_hook(s, dtype)) for n, s in stats.items()]
    try:
        model.eval()
        with torch.no_grad():
            for batch in calibration_batches(calibration, statistic, device):
                batch.inputs.call(model)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    scores = GroupScores(statistic)
    cache: dict[int, torch.Tensor] = {}
    for group in graph.prunable:
        total = np.zeros(group.size)
        layers = np.zeros(group.size)  # how many observed layers hold each atom
        problems = []
        for name, member in plan[group.id]:
            s = stats[name]
            if s.count == 0 or s.positive is None or s.zeros is None:
                problems.append(f"{name}: {s.mismatch[0]}" if s.mismatch else f"{name} did not run")
                continue
            if statistic == "mean_activation":
                per_channel = s.positive.cpu().double().numpy() / s.count
            else:
                per_channel = 1.0 - s.zeros.cpu().double().numpy() / s.count
            channels = np.bincount(member.atom, minlength=group.size)
            held = channels > 0
            summed = np.bincount(member.atom, weights=per_channel, minlength=group.size)
            total[held] += summed[held] / channels[held]
            layers[held] += 1
        if not plan[group.id]:
            reason = "no layer producing the group's channels can be observed"
        elif not layers.all():
            reason = "; ".join(problems) or "some channels are produced by no observed layer"
        else:
            scores[group.id] = total / layers
            continue
        scores.use_magnitude(group, tensors, f"{reason}: scored by L1 magnitude", cache)
    return scores


def score(model: nn.Module, graph: ChannelGraph, request: ScoreRequest) -> GroupScores:
    """The registry's entry for ``mean_activation`` and ``apoz``."""
    return activation_scores(model, graph, request.calibration, request.criterion)
