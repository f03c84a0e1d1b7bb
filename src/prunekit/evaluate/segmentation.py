"""Segmentation quality of a model over (image, mask) batches: mean IoU, mean Dice, pixel accuracy.

Both means are taken over the classes that occur (in the masks or the predictions) on the
evaluated data, from one confusion matrix accumulated over every pixel, so a large image does
not weigh more than its pixels. Pixels labelled ``ignore_index`` (255, the PASCAL VOC
convention for boundaries) are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit._utils import module_device
from prunekit.errors import DataError

IGNORE_INDEX = 255


@dataclass(frozen=True)
class SegmentationMetrics:
    miou: float
    dice: float
    pixel_accuracy: float
    n: int  # images
    pixels: int
    num_classes: int
    per_class_iou: tuple[float | None, ...]  # None: the class occurs nowhere

    def to_dict(self) -> dict[str, Any]:
        return {
            "miou": self.miou,
            "dice": self.dice,
            "pixel_accuracy": self.pixel_accuracy,
            "n": self.n,
            "pixels": self.pixels,
            "num_classes": self.num_classes,
            "per_class_iou": list(self.per_class_iou),
        }


def segmentation_logits(output: Any) -> torch.Tensor:
    """The [batch, classes, H, W] logits of a segmentation model's output: a tensor, a dict
    with ``"out"`` (torchvision) or an object with ``.logits`` (Hugging Face)."""
    if isinstance(output, dict) and "out" in output:
        output = output["out"]
    output = getattr(output, "logits", output)
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        described = (
            f"a tensor of shape {list(output.shape)}"
            if isinstance(output, torch.Tensor)
            else f"a {type(output).__name__}"
        )
        raise DataError(
            f"a segmentation model must return logits [batch, classes, H, W], got {described}"
        )
    return output


def metrics_from_confusion(confusion: torch.Tensor, n: int) -> SegmentationMetrics:
    """Mean IoU / Dice / pixel accuracy of a [classes, classes] (truth x prediction) matrix."""
    confusion = confusion.to(torch.float64)
    true_positive = confusion.diagonal()
    truth, predicted = confusion.sum(1), confusion.sum(0)
    union = truth + predicted - true_positive
    present = union > 0
    iou = torch.where(present, true_positive / union.clamp(min=1), torch.zeros_like(union))
    dice = torch.where(
        present, 2 * true_positive / (truth + predicted).clamp(min=1), torch.zeros_like(union)
    )
    pixels = int(confusion.sum().item())
    if pixels == 0:
        raise DataError("no labelled pixel to evaluate (every mask pixel is 255 = ignore?)")
    count = int(present.sum())
    return SegmentationMetrics(
        miou=float(iou[present].sum() / count),
        dice=float(dice[present].sum() / count),
        pixel_accuracy=float(true_positive.sum() / pixels),
        n=n,
        pixels=pixels,
        num_classes=confusion.shape[0],
        per_class_iou=tuple(float(v) if p else None for v, p in zip(iou, present, strict=True)),
    )


def evaluate_segmentation(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device | str | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> SegmentationMetrics:
    """mIoU, Dice and pixel accuracy of ``model`` over ``(images, masks)`` batches (masks
    int64 [batch, H, W]); logits of another size are resized bilinearly to the mask's."""
    target = torch.device(device) if device is not None else module_device(model)
    previous = {m: m.training for m in model.modules()}
    model.eval()
    confusion: torch.Tensor | None = None
    n = 0
    try:
        with torch.inference_mode():
            for index, batch in enumerate(loader):
                if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                    raise DataError(f"batch {index}: expected (images, masks)")
                images, masks = batch[0].to(target), batch[1].to(target)
                logits = segmentation_logits(model(images))
                if logits.shape[-2:] != masks.shape[-2:]:
                    logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear",
                                           align_corners=False)  # fmt: skip
                classes = logits.shape[1]
                if confusion is None:
                    confusion = torch.zeros(classes, classes, dtype=torch.int64, device=target)
                elif confusion.shape[0] != classes:
                    raise DataError(f"batch {index}: {classes} classes after {confusion.shape[0]}")
                valid = masks != ignore_index
                truth = masks[valid]
                if truth.numel() and (truth.min() < 0 or truth.max() >= classes):
                    raise DataError(
                        f"batch {index}: mask values up to {int(truth.max())} but the model "
                        f"predicts {classes} classes (255 marks ignored pixels)"
                    )
                predicted = logits.argmax(1)[valid]
                confusion += torch.bincount(
                    truth * classes + predicted, minlength=classes * classes
                ).reshape(classes, classes)
                n += images.shape[0]
    finally:
        for module, was_training in previous.items():
            module.training = was_training
    if confusion is None:
        raise DataError("the data loader yielded no samples")
    return metrics_from_confusion(confusion.cpu(), n)
