"""Top-k accuracy and cross-entropy of a classifier over a data loader."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit._checks import check_device, check_module, check_number, check_sequence, got
from prunekit._utils import module_device
from prunekit.errors import DataError, InvalidArgumentError, InvalidValueError


@dataclass(frozen=True)
class ClassificationMetrics:
    """Accuracy of a classifier on ``n`` samples.

    ``topk`` maps k to the fraction (in [0, 1]) of samples whose label is among the k highest
    logits. A requested k above ``num_classes`` is clamped to ``num_classes`` (where it is
    trivially 1.0), so the keys are the k values actually measured: with 3 classes, top-5 is
    stored under 3 and ``top5`` is None.
    """

    topk: dict[int, float]
    loss: float  # mean cross-entropy per sample, in nats
    n: int
    num_classes: int

    @property
    def top1(self) -> float:
        return self.topk[1]

    @property
    def top5(self) -> float | None:
        return self.topk.get(5)

    def to_dict(self) -> dict[str, float | int]:
        """Plain JSON-able values: n, num_classes, loss and one ``top{k}`` entry per k."""
        result: dict[str, float | int] = {
            "n": self.n,
            "num_classes": self.num_classes,
            "loss": self.loss,
        }
        result.update({f"top{k}": value for k, value in sorted(self.topk.items())})
        return result


def _check_batch(batch: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise DataError(
            f"batch {index} of the loader is a {type(batch).__name__}; "
            "expected an (inputs, labels) pair"
        )
    inputs, labels = batch
    return inputs, torch.as_tensor(labels)


def _check_logits(logits: torch.Tensor, labels: torch.Tensor, index: int) -> None:
    if logits.ndim != 2:
        raise DataError(
            f"batch {index}: the model returned shape {tuple(logits.shape)}; expected "
            "classification logits of shape [batch, num_classes]"
        )
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise DataError(
            f"batch {index}: labels of shape {tuple(labels.shape)} do not match logits of shape "
            f"{tuple(logits.shape)}; expected one class index per sample"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"batch {index}: labels have dtype {labels.dtype}; expected class indices")
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise DataError(
            f"batch {index}: labels range from {int(labels.min())} to {int(labels.max())} but "
            f"the model has {logits.shape[1]} classes"
        )


def evaluate_classification(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device | str | None = None,
    topk: Sequence[int] = (1, 5),
    max_batches: int | None = None,
) -> ClassificationMetrics:
    """Measure top-k accuracy and mean cross-entropy of ``model`` over ``loader``.

    ``loader`` yields ``(inputs, labels)`` batches; the model must map inputs to logits
    [batch, num_classes] (an output with a ``.logits`` attribute, as Hugging Face models
    return, is accepted too). Top-1 is always measured. ``device=None`` uses the device of the
    model's first parameter (or buffer), or the CPU if it has neither. Only the first
    ``max_batches`` batches are used when it is given. The model runs in eval mode under
    ``torch.inference_mode()``; every submodule's train/eval flag is restored afterwards, even
    when an exception is raised.

    Raises ``DataError`` for an empty loader, a batch that is not an (inputs, labels) pair,
    logits that are not [batch, num_classes], or labels outside the class range;
    ``InvalidArgumentError`` (a ``TypeError``) for an argument of the wrong type and
    ``InvalidValueError`` (a ``ValueError``) for a non-positive k or ``max_batches``.
    """
    check_module(model)
    if isinstance(loader, (str, bytes, Mapping, torch.Tensor)) or not (
        hasattr(loader, "__iter__") or hasattr(loader, "__getitem__")
    ):
        raise InvalidArgumentError(
            "loader must be an iterable of (inputs, labels) batches, such as a "
            f"torch.utils.data.DataLoader, got {got(loader)}"
        )
    check_sequence(
        topk, "topk", "a sequence of positive integers such as (1, 5)", items=numbers.Integral
    )
    if any(k < 1 for k in topk):
        raise InvalidValueError(f"topk values must be positive integers, got {tuple(topk)}")
    if max_batches is not None:
        check_number(max_batches, "max_batches", low=1, integer=True)
    target = check_device(device) if device is not None else module_device(model)
    batches = loader if max_batches is None else islice(loader, max_batches)
    # Per-module flags rather than model.training alone: a model may keep, say, frozen
    # BatchNorm layers in eval mode inside a module that is in train mode.
    previous_modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            return _accumulate(model, batches, target, set(topk) | {1})
    finally:
        for module, was_training in previous_modes.items():
            module.training = was_training


def _accumulate(
    model: nn.Module, batches: Iterable[Any], device: torch.device, requested_k: set[int]
) -> ClassificationMetrics:
    n = 0
    loss_sum = 0.0
    correct: dict[int, int] = {}
    num_classes: int | None = None
    for index, batch in enumerate(batches):
        inputs, labels = _check_batch(batch, index)
        output = model(inputs.to(device) if isinstance(inputs, torch.Tensor) else inputs)
        logits = getattr(output, "logits", output)
        if not isinstance(logits, torch.Tensor):
            raise DataError(
                f"batch {index}: the model returned a {type(output).__name__}; expected a "
                "tensor of classification logits [batch, num_classes]"
            )
        labels = labels.to(logits.device)
        _check_logits(logits, labels, index)
        if num_classes is None:
            num_classes = logits.shape[1]
            correct = {min(k, num_classes): 0 for k in requested_k}
        elif logits.shape[1] != num_classes:
            raise DataError(
                f"batch {index}: the model returned {logits.shape[1]} classes after "
                f"{num_classes} in earlier batches"
            )
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        ranked = logits.topk(max(correct), dim=1).indices
        hits = ranked == labels.unsqueeze(1)
        for k in correct:
            correct[k] += int(hits[:, :k].any(dim=1).sum())
        n += labels.shape[0]
    if n == 0 or num_classes is None:
        raise DataError("the data loader yielded no samples; check the dataset path and split")
    return ClassificationMetrics(
        topk={k: correct[k] / n for k in sorted(correct)},
        loss=loss_sum / n,
        n=n,
        num_classes=num_classes,
    )
