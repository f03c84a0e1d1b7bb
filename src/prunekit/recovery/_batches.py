"""Batches in the recovery engine: how many an epoch has, moving them, calling the model on
them, counting their samples; and the one-line epoch report."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from prunekit.errors import DataError
from prunekit.recovery._checkpoint import RecoveryError

if TYPE_CHECKING:
    from prunekit.recovery.finetuning import EpochStats, FinetuneConfig


def steps_per_epoch(loader: Iterable[Any], config: FinetuneConfig) -> int:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        if config.max_steps_per_epoch is None:
            raise RecoveryError(
                "the train loader has no length; set FinetuneConfig.max_steps_per_epoch so the "
                "learning-rate schedule knows how many steps an epoch has"
            ) from None
        return config.max_steps_per_epoch
    if n == 0:
        raise DataError("the train loader is empty")
    return n if config.max_steps_per_epoch is None else min(n, config.max_steps_per_epoch)


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(inputs)`` for an ``(inputs, labels)`` pair, ``model(**batch)`` for a mapping,
    ``model(batch)`` for a tensor."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return model(batch[0])
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, Tensor):
        return model(batch)
    raise DataError(
        f"cannot call the model on a {type(batch).__name__} batch: give (inputs, labels) pairs, "
        "mappings of keyword arguments or tensors, or pass forward=(model, batch) -> output"
    )


def batch_size(batch: Any) -> int:
    """Samples in a batch: the labels' length for a pair, else the first tensor's."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Tensor):
        return int(batch[1].shape[0]) if batch[1].dim() else 1
    stack = [batch]
    while stack:
        item = stack.pop(0)
        if isinstance(item, Tensor):
            return int(item.shape[0]) if item.dim() else 1
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return 1


def cpu_copy(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def describe(stats: EpochStats, epochs: int) -> str:
    text = f"epoch {stats.epoch}/{epochs}: train loss {stats.train_loss:.4f}, lr {stats.lr:.3g}"
    if stats.val_top1 is not None:
        text += f", val top-1 {stats.val_top1:.4f}"
    if stats.val_score is not None and stats.val_score != stats.val_top1:
        text += f", val score {stats.val_score:.4f}"
    return text
