"""Box detection accuracy: average precision at one IoU threshold (VOC / COCO style)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from prunekit.errors import DataError

__all__ = ["average_precision", "box_iou", "box_map"]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of xyxy boxes ``a`` [N, 4] and ``b`` [M, 4] -> [N, M], continuous coordinates
    (a box covers ``[x1, x2) x [y1, y2)``, area ``(x2 - x1) * (y2 - y1)``, no "+1")."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = area_a[:, None] + area_b[None, :] - overlap
    return torch.where(union > 0, overlap / union.clamp(min=1e-12), torch.zeros_like(overlap))


def average_precision(tp: Sequence[bool], n_truth: int) -> float:
    """All-point interpolated AP (VOC 2010+, COCO without its 101-point sampling) of
    detections already sorted by decreasing score: ``tp[i]`` says whether the i-th one is a
    true positive; ``n_truth`` ground-truth boxes in all (> 0)."""
    if n_truth <= 0:
        raise ValueError("average precision needs at least one ground-truth box")
    hits = torch.tensor([bool(v) for v in tp], dtype=torch.float64)
    if hits.numel() == 0:
        return 0.0
    true_pos = hits.cumsum(0)
    precision = true_pos / torch.arange(1, hits.numel() + 1, dtype=torch.float64)
    recall = true_pos / n_truth
    # precision envelope: at each rank the best precision at this or any higher recall
    envelope = precision.flip(0).cummax(0).values.flip(0)
    previous = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
    return float(((recall - previous) * envelope).sum())


def _field(item: Mapping[str, Any], key: str, what: str, index: int) -> torch.Tensor:
    if key not in item:
        raise DataError(f"{what} {index} has no {key!r}")
    return torch.as_tensor(item[key]).detach().cpu()


def box_map(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    iou: float = 0.5,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Mean average precision over classes at IoU threshold ``iou``.

    ``predictions``: per image ``{"boxes" xyxy [N, 4], "scores" [N], "labels" [N]}``;
    ``targets``: per image ``{"boxes", "labels"}`` (torchvision detection convention).
    ``num_classes`` counts class ids including the background id 0 (torchvision's
    convention): classes ``1 .. num_classes - 1`` are evaluated, predictions of other ids are
    dropped; default: every id > 0 that occurs in the targets or predictions.

    Per class, detections of all images are ranked by score (ties keep image order, then the
    order within the image); each is a true positive when its IoU with a not yet matched
    ground-truth box of its class in its image is >= ``iou`` (the best such box is matched,
    as in COCO), otherwise a false positive. AP is the all-point interpolated area under the
    precision-recall curve. A class without ground truth is left out of the mean (its
    ``per_class`` entry is None). Returns ``{"map", "per_class": {id: AP or None}, "images"}``;
    ``map`` is 0.0 when no class has ground truth.
    """
    if len(predictions) != len(targets):
        raise DataError(f"{len(predictions)} predictions for {len(targets)} target images")
    preds, truths = [], []
    for i, (pred, target) in enumerate(zip(predictions, targets, strict=True)):
        p_boxes = _field(pred, "boxes", "prediction", i).to(torch.float64).reshape(-1, 4)
        p_scores = _field(pred, "scores", "prediction", i).to(torch.float64).reshape(-1)
        p_labels = _field(pred, "labels", "prediction", i).to(torch.int64).reshape(-1)
        t_boxes = _field(target, "boxes", "target", i).to(torch.float64).reshape(-1, 4)
        t_labels = _field(target, "labels", "target", i).to(torch.int64).reshape(-1)
        if not len(p_boxes) == len(p_scores) == len(p_labels):
            raise DataError(f"prediction {i}: boxes, scores and labels differ in length")
        if len(t_boxes) != len(t_labels):
            raise DataError(f"target {i}: boxes and labels differ in length")
        preds.append((p_boxes, p_scores, p_labels))
        truths.append((t_boxes, t_labels))
    if num_classes is None:
        ids = {int(v) for _, labels in truths for v in labels} | {
            int(v) for _, _, labels in preds for v in labels
        }
        classes = sorted(c for c in ids if c > 0)
    else:
        classes = list(range(1, num_classes))
    per_class: dict[int, float | None] = {}
    for c in classes:
        n_truth = sum(int((labels == c).sum()) for _, labels in truths)
        if n_truth == 0:
            per_class[c] = None
            continue
        ranked = []  # (score, image, position in image)
        for image, (_, scores, labels) in enumerate(preds):
            for j in torch.nonzero(labels == c).flatten().tolist():
                ranked.append((-float(scores[j]), image, j))
        ranked.sort()
        matched = [torch.zeros(int((labels == c).sum()), dtype=torch.bool) for _, labels in truths]
        class_truth = [boxes[labels == c] for boxes, labels in truths]
        tp = []
        for _, image, j in ranked:
            gt = class_truth[image]
            if len(gt) == 0:
                tp.append(False)
                continue
            overlaps = box_iou(preds[image][0][j : j + 1], gt)[0]
            overlaps[matched[image]] = -1.0
            best = int(overlaps.argmax())
            if overlaps[best] >= iou:
                matched[image][best] = True
                tp.append(True)
            else:
                tp.append(False)
        per_class[c] = average_precision(tp, n_truth)
    scored = [v for v in per_class.values() if v is not None]
    return {
        "map": sum(scored) / len(scored) if scored else 0.0,
        "per_class": per_class,
        "images": len(targets),
    }
