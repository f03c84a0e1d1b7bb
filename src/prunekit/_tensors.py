"""Find and replace a model's parameters and buffers by qualified name, ties included."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def scan(
    model: nn.Module,
) -> tuple[dict[str, nn.Module], dict[str, torch.Tensor], dict[int, list[tuple[nn.Module, str]]]]:
    """One walk over the model: modules by name, parameters and buffers by qualified name
    (a tied tensor under its first name), and every (module, attribute) holding each tensor."""
    modules: dict[str, nn.Module] = {}
    tensors: dict[str, torch.Tensor] = {}
    holders: dict[int, list[tuple[nn.Module, str]]] = defaultdict(list)
    for name, module in model.named_modules():
        modules[name] = module
        for store in (module._parameters, module._buffers):
            for attr, t in store.items():
                if t is None:
                    continue
                if id(t) not in holders:
                    tensors[f"{name}.{attr}" if name else attr] = t
                holders[id(t)].append((module, attr))
    return modules, tensors, holders


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return scan(model)[1]


def aliases(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(tensor) -> every (module, attribute) holding it: tied weights are replaced everywhere."""
    return scan(model)[2]


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


def first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a model's output is judged by: the output itself, its ``logits`` or
    ``last_hidden_state`` (Hugging Face), else the first tensor found in a dict, list or tuple
    (depth first). None when it holds no tensor: each caller says why that is wrong for it."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("logits", "last_hidden_state"):
        value = output.get(name) if isinstance(output, Mapping) else getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    values = output.values() if isinstance(output, Mapping) else output
    if isinstance(values, (list, tuple)) or isinstance(output, Mapping):
        for value in values:
            found = first_tensor(value)
            if found is not None:
                return found
    return None
