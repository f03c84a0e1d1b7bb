"""Find and replace a model's parameters and buffers by qualified name, ties included."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        tensors.setdefault(name, p)
    for name, b in model.named_buffers():
        tensors.setdefault(name, b)
    return tensors


def aliases(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(tensor) -> every (module, attribute) holding it: tied weights are replaced everywhere."""
    holders: dict[int, list[tuple[nn.Module, str]]] = defaultdict(list)
    for module in model.modules():
        for attr, p in module._parameters.items():
            if p is not None:
                holders[id(p)].append((module, attr))
        for attr, b in module._buffers.items():
            if b is not None:
                holders[id(b)].append((module, attr))
    return holders


def replace_tensor(
    holders: list[tuple[nn.Module, str]],
    old: torch.Tensor,
    new: torch.Tensor,
    keep_object: bool = False,
) -> torch.Tensor:
    """Put ``new`` wherever ``old`` is held; a parameter stays a parameter (a fresh one,
    unless ``keep_object``: putting the original object back)."""
    if isinstance(old, nn.Parameter) and not keep_object:
        new = nn.Parameter(new, requires_grad=old.requires_grad)
    for module, attr in holders:
        if attr in module._parameters:
            module._parameters[attr] = new  # type: ignore[assignment]
        else:
            module._buffers[attr] = new
    return new
