"""mIoU / Dice / pixel accuracy against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.evaluate.segmentation import evaluate_segmentation, metrics_from_confusion


class _Fixed(nn.Module):
    """Returns logits whose argmax is a fixed prediction map."""

    def __init__(self, prediction: torch.Tensor, classes: int) -> None:
        super().__init__()
        self.register_buffer(
            "logits", nn.functional.one_hot(prediction, classes).permute(2, 0, 1).float()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.unsqueeze(0).expand(x.shape[0], -1, -1, -1)


def test_golden_values_on_a_2x2_image() -> None:
    truth = torch.tensor([[0, 0], [1, 1]])
    prediction = torch.tensor([[0, 1], [1, 1]])
    # class 0: TP 1, FN 1, FP 0 -> IoU 1/2, Dice 2/3; class 1: TP 2, FP 1 -> IoU 2/3, Dice 4/5
    model = _Fixed(prediction, 2)
    metrics = evaluate_segmentation(model, [(torch.zeros(1, 3, 2, 2), truth.unsqueeze(0))])
    assert metrics.miou == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert metrics.dice == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert metrics.pixel_accuracy == pytest.approx(3 / 4)
    assert metrics.pixels == 4 and metrics.n == 1


def test_ignored_pixels_and_absent_classes_do_not_count() -> None:
    truth = torch.tensor([[0, 255], [0, 0]])
    prediction = torch.tensor([[0, 2], [0, 0]])  # class 1 occurs nowhere, 2 only where ignored
    metrics = evaluate_segmentation(
        _Fixed(prediction, 3), [(torch.zeros(1, 3, 2, 2), truth.unsqueeze(0))]
    )
    assert metrics.miou == 1.0 and metrics.pixels == 3
    assert metrics.per_class_iou == (1.0, None, None)


def test_confusion_matrix_accumulates_over_batches() -> None:
    confusion = torch.tensor([[3, 1], [0, 4]])
    m = metrics_from_confusion(confusion, n=2)
    assert m.miou == pytest.approx((3 / 4 + 4 / 5) / 2)
    assert m.pixel_accuracy == pytest.approx(7 / 8)
