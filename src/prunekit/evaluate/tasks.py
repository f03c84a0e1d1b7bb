"""Task metrics of a perception stage, by name: what ``prunekit pipeline`` plans and reports with.

One metric scores a model on labelled items ``(input, target)``:

- ``map``: box mAP@0.5 (``detection.box_map``). The model returns torchvision-style
  detections (a list of ``{"boxes", "scores", "labels"}``) or has a ``decode(output)`` that
  turns its output into them (``prunekit.nn.perception.CenterNetLite``). Targets: dicts with
  ``boxes`` and ``labels``.
- ``miou``: mean IoU over classes (``segmentation.metrics_from_confusion``). The model returns
  ``[B, classes, H, W]`` logits (or torchvision's ``{"out": ...}``). Targets: ``[H, W]`` class
  masks, or dicts with ``masks``.
- ``absrel``: mean |d - t| / t over valid pixels (``depth.depth_metrics``; lower is better).
  Targets: dicts with ``depth``.
- ``agreement``: no labels; the share of positions whose class equals the dense model's
  (argmax over channels), or ``1 - AbsRel`` against the dense output for one-channel outputs.

``loss(dense, value)`` is the degradation, always "higher = worse" (dense - value for metrics
where higher is better, value - dense for ``absrel``), so stages can be summed with weights.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit._tensors import first_tensor
from prunekit.errors import DataError

__all__ = ["TASK_METRICS", "TaskMetric", "check_labels", "task_metric"]

Items = Sequence[tuple[torch.Tensor, Any]]


@dataclass(frozen=True)
class TaskMetric:
    """A named score of a model on labelled items; ``needs``: the target field it reads."""

    name: str
    higher_is_better: bool
    needs: str | None  # "boxes" | "masks" | "depth" | None (agreement: no labels)
    score: Callable[[nn.Module, Items, int], float]

    def loss(self, dense: float, value: float) -> float:
        """How much worse ``value`` is than ``dense`` (>= 0 when worse)."""
        return dense - value if self.higher_is_better else value - dense


def _batches(items: Items, batch_size: int) -> Any:
    for lo in range(0, len(items), batch_size):
        chunk = items[lo : lo + batch_size]
        yield torch.stack([x for x, _ in chunk]), [t for _, t in chunk]


def _field(target: Any, key: str) -> torch.Tensor:
    if isinstance(target, dict):
        return torch.as_tensor(target[key])
    return torch.as_tensor(target)  # a bare mask


def _detections(model: nn.Module, output: Any) -> list[dict[str, Any]]:
    if isinstance(output, list) and all(isinstance(o, dict) and "boxes" in o for o in output):
        return output
    decode = getattr(model, "decode", None)
    if callable(decode):
        return list(decode(output))
    raise DataError(
        f"metric map: {type(model).__name__} returns {type(output).__name__}, not a list of "
        "{boxes, scores, labels} detections, and has no decode() that makes them"
    )


@torch.no_grad()
def _map(model: nn.Module, items: Items, batch_size: int) -> float:
    from prunekit.evaluate.detection import box_map

    predictions, targets = [], []
    for images, batch_targets in _batches(items, batch_size):
        predictions += _detections(model, model(images))
        targets += batch_targets
    return float(box_map(predictions, targets, iou=0.5)["map"])


@torch.no_grad()
def _miou(model: nn.Module, items: Items, batch_size: int) -> float:
    from prunekit.evaluate.segmentation import IGNORE_INDEX, metrics_from_confusion

    confusion: torch.Tensor | None = None
    for images, targets in _batches(items, batch_size):
        logits = _logits(model(images))
        classes = logits.shape[1]
        masks = torch.stack([_field(t, "masks") for t in targets]).long()
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = nn.functional.interpolate(logits, size=masks.shape[-2:], mode="bilinear",
                                               align_corners=False)  # fmt: skip
        valid = masks != IGNORE_INDEX
        truth, predicted = masks[valid], logits.argmax(1)[valid]
        if truth.numel() and int(truth.max()) >= classes:
            raise DataError(f"metric miou: mask values up to {int(truth.max())} but the model "
                            f"predicts {classes} classes")  # fmt: skip
        counts = torch.bincount(truth * classes + predicted, minlength=classes * classes)
        counts = counts.reshape(classes, classes)
        confusion = counts if confusion is None else confusion + counts
    if confusion is None:
        raise DataError("metric miou: no items to evaluate")
    return metrics_from_confusion(confusion, len(items)).miou


def _logits(output: Any) -> torch.Tensor:
    from prunekit.evaluate.segmentation import segmentation_logits

    return segmentation_logits(output)


@torch.no_grad()
def _absrel(model: nn.Module, items: Items, batch_size: int) -> float:
    from prunekit.evaluate.depth import depth_metrics

    preds, truths = [], []
    for images, targets in _batches(items, batch_size):
        out = model(images)
        preds.append(out if isinstance(out, torch.Tensor) else _first(out))
        truths.append(torch.stack([_field(t, "depth") for t in targets]))
    return float(depth_metrics(torch.cat(preds), torch.cat(truths))["absrel"])


def _first(output: Any) -> torch.Tensor:
    """A depth model's prediction: the output itself, or the first tensor of a dict / tuple."""
    found = first_tensor(output)
    if found is None:
        raise DataError(
            f"metric absrel: the model returns {type(output).__name__}, not a depth map"
        )
    return found


def agreement(dense: torch.Tensor, other: torch.Tensor) -> float:
    """The ``agreement`` metric of ``other`` against ``dense`` (module docstring)."""
    if dense.ndim >= 2 and dense.shape[1] > 1:
        return float((dense.argmax(1) == other.argmax(1)).float().mean())
    rel = (other - dense).abs() / dense.abs().clamp_min(1e-6)
    return float(1 - rel.mean())


TASK_METRICS: dict[str, TaskMetric] = {
    "map": TaskMetric("map", True, "boxes", _map),
    "miou": TaskMetric("miou", True, "masks", _miou),
    "absrel": TaskMetric("absrel", False, "depth", _absrel),
}
WHAT = {"boxes": "boxes and labels per image", "masks": "segmentation masks",
        "depth": "depth maps"}  # fmt: skip


def task_metric(name: str, *, trust_code: bool = False) -> TaskMetric:
    """The metric called ``name``: one of ``TASK_METRICS`` or ``module:callable``, a function
    ``(model, items, batch_size) -> float`` (higher is better unless it has
    ``higher_is_better = False``), imported only with ``trust_code`` (it runs that module)."""
    if name in TASK_METRICS:
        return TASK_METRICS[name]
    module, sep, attribute = name.partition(":")
    if not sep or not module or not attribute:
        raise DataError(f"unknown metric {name!r}: use map, miou, absrel, agreement or "
                        "module:callable")  # fmt: skip
    if not trust_code:
        raise DataError(f"metric {name!r} imports and runs {module}; set trust_code: true on "
                        "the stage if you trust that code")  # fmt: skip
    try:
        function = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise DataError(f"metric {name!r}: cannot import it ({exc})") from None
    if not callable(function):
        raise DataError(f"metric {name!r} is not callable")
    higher = bool(getattr(function, "higher_is_better", True))
    return TaskMetric(name, higher, getattr(function, "needs", None), function)


def check_labels(metric: TaskMetric, target: Any, data_name: str) -> None:
    """A one-line error when ``target`` (one item's) lacks what ``metric`` reads."""
    need = metric.needs
    if need is None:
        return
    if isinstance(target, dict):
        keys = {"boxes": ("boxes", "labels"), "masks": ("masks",), "depth": ("depth",)}[need]
        if all(k in target for k in keys):
            return
        has = ", ".join(sorted(map(str, target))) or "nothing"
        raise DataError(f"metric {metric.name} needs {WHAT[need]}; the data {data_name} gives "
                        f"targets with {has}")  # fmt: skip
    if need == "masks" and isinstance(target, torch.Tensor) and target.dim() == 2:
        return
    given = ("class labels" if isinstance(target, int) or (isinstance(target, torch.Tensor)
             and target.dim() == 0) else f"targets of type {type(target).__name__}")  # fmt: skip
    raise DataError(f"metric {metric.name} needs {WHAT[need]}; the data {data_name} gives "
                    f"{given}")  # fmt: skip


class TaskDrop:
    """A sensitivity metric (model -> drop, higher = worse): ``metric``'s loss against the
    dense model's score on ``items`` (the fit part: sensitivity never sees eval data)."""

    def __init__(self, metric: TaskMetric, model: nn.Module, items: Items, batch_size: int = 16):
        self.metric, self.items, self.batch_size = metric, items, batch_size
        self.name = f"{metric.name}_drop"
        self.dense = self.score(model)

    def score(self, model: nn.Module) -> float:
        was = model.training
        model.eval()
        try:
            return float(self.metric.score(model, self.items, self.batch_size))
        finally:
            model.train(was)

    def __call__(self, model: nn.Module) -> float:
        return self.metric.loss(self.dense, self.score(model))
