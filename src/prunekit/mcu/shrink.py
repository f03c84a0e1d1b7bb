"""Remove dead hidden neurons from a pruned MLP, keeping its function exactly.

After unstructured pruning some hidden neurons lose every incoming weight (their output is the
constant ``relu(bias)``) or every outgoing weight (nobody reads them). Each costs the device a
bias, a multiplier and a shift (9 bytes) and arena space for nothing, so they are cut out:
a constant neuron's contribution is folded into the next layer's bias first.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


def _linear_relu_pairs(model: nn.Sequential) -> list[tuple[nn.Linear, bool]]:
    modules = list(model)
    pairs: list[tuple[nn.Linear, bool]] = []
    for index, module in enumerate(modules):
        if isinstance(module, nn.Linear):
            relu = index + 1 < len(modules) and isinstance(modules[index + 1], nn.ReLU)
            pairs.append((module, relu))
    return pairs


@torch.no_grad()
def _slice(linear: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
        linear.out_features = len(rows)
    if cols is not None:
        weight = weight[:, cols]
        linear.in_features = len(cols)
    linear.weight = nn.Parameter(weight.clone())
    if bias is not None:
        linear.bias = nn.Parameter(bias.clone())


@torch.no_grad()
def remove_dead_neurons(model: nn.Sequential) -> int:
    """Cut hidden neurons with no incoming or no outgoing weights; returns how many went.

    Works on ``nn.Sequential`` of Linear/ReLU (Flatten, Dropout, Identity in between are fine).
    A neuron is only removed between two Linear layers with a ReLU (or nothing) between them.
    """
    pairs = _linear_relu_pairs(model)
    removed = 0
    for (layer, relu), (following, _) in itertools.pairwise(pairs):
        if following.bias is None:
            continue  # nowhere to fold a constant neuron; leave the layer alone
        no_inputs = (layer.weight == 0).all(dim=1)
        no_outputs = (following.weight == 0).all(dim=0)
        dead = no_inputs | no_outputs
        if not dead.any() or bool(dead.all()):
            continue  # keep at least one neuron so shapes stay valid
        constant: torch.Tensor = (
            layer.bias.detach() if layer.bias is not None else torch.zeros(layer.out_features)
        )
        constant = torch.relu(constant) if relu else constant
        folded = no_inputs & ~no_outputs
        following.bias.add_(following.weight[:, folded] @ constant[folded])
        alive = torch.nonzero(~dead).squeeze(1)
        _slice(layer, alive, None)
        _slice(following, None, alive)
        removed += int(dead.sum())
    return removed
