"""Optimizer, learning-rate schedule and precision of the recovery engine, and rebuilding an
optimizer after pruning swapped tensors.

Structured pruning *replaces* every tensor it shrinks with a new ``nn.Parameter``: an
optimizer built before still holds the old, full-size tensors. ``rebuild_optimizer`` makes a
new one of the same class and param-group hyperparameters (learning rate included) over the
model's current tensors of the same names; optimizer state (momentum, Adam moments) carries
over for the tensors pruning left untouched and starts from zero for the replaced ones, whose
old state has the wrong shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from prunekit.recovery._checkpoint import RecoveryError

if TYPE_CHECKING:
    from prunekit.recovery.finetuning import FinetuneConfig


class _Fraction(Protocol):
    def fraction(self) -> float: ...  # share of the time budget spent, in [0, 1]


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


def lr_factor(config: FinetuneConfig, per_epoch: int, clock: _Fraction) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 0 (over the steps, or the steps and the clock),
    or constant."""
    total = max(1, config.epochs * per_epoch)
    warmup = min(total, round(config.warmup_epochs * per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if config.schedule == "cosine_time":
            progress = max(progress, clock.fraction())
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_optimizer(params: list[nn.Parameter], config: FinetuneConfig) -> Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=config.lr, weight_decay=config.weight_decay)


def amp_settings(config: FinetuneConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a gradient scaler is needed)."""
    if config.amp == "auto":
        cuda = device.type == "cuda" and torch.cuda.is_available()
        return (torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None), False
    return {"off": (None, False), "bf16": (torch.bfloat16, False),
            "fp16": (torch.float16, True)}[config.amp]  # fmt: skip
