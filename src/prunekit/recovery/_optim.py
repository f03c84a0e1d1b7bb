"""Optimizers of the recovery engine, and rebuilding one after pruning swapped tensors.

Structured pruning *replaces* every tensor it shrinks with a new ``nn.Parameter``: an
optimizer built before still holds the old, full-size tensors. ``rebuild_optimizer`` makes a
new one of the same class and param-group hyperparameters (learning rate included) over the
model's current tensors of the same names; optimizer state (momentum, Adam moments) carries
over for the tensors pruning left untouched and starts from zero for the replaced ones, whose
old state has the wrong shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from prunekit.recovery._checkpoint import RecoveryError

# An optimizer's param groups, each as parameter names (str) or, for a tensor that is not the
# model's, the tensor itself; plus the hyperparameters of each group.
Layout = list[tuple[dict[str, Any], list[str | Tensor]]]


def group_layout(model: nn.Module, optimizer: Optimizer) -> Layout:
    """The optimizer's groups by parameter name: take it *before* pruning swaps tensors."""
    names = {id(p): n for n, p in model.named_parameters()}
    layout: Layout = []
    for group in optimizer.param_groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        layout.append((hyper, [names.get(id(p), p) for p in group["params"]]))
    return layout


def rebuild_optimizer(model: nn.Module, old: Optimizer, layout: Layout) -> Optimizer:
    """A new optimizer like ``old`` over ``model``'s current tensors (see the module docstring)."""
    current = dict(model.named_parameters())
    groups: list[dict[str, Any]] = []
    for hyper, members in layout:
        params: list[Tensor] = []
        for m in members:
            p = current.get(m) if isinstance(m, str) else m
            if p is not None:
                params.append(p)
        if params:
            groups.append({**hyper, "params": params})
    if not groups:
        raise RecoveryError("after pruning, none of the optimizer's parameters is left")
    try:
        new = type(old)(groups, **old.defaults)
    except TypeError as exc:
        raise RecoveryError(
            f"cannot rebuild a {type(old).__name__} from its defaults ({exc}); pass "
            "make_optimizer=lambda model: ... to IterativePruning instead"
        ) from None
    kept: Mapping[Any, Any] = old.state
    for group in new.param_groups:
        for p in group["params"]:
            if p in kept:  # untouched by pruning: same tensor object, state still valid
                new.state[p] = kept[p]
    return new
