"""The oracle on torchvision segmentation models and on detectors (backbone and heads as
submodules, where outputs are continuous), plus whole-detector pruning end to end."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import get_model

from _oracle import assert_exact, assert_runs_and_trains, choose, outputs, pruned_copy, randomize
from prunekit.artifact import load, save
from prunekit.graph import trace_channels
from prunekit.inputs import ExampleInputs, ImageListSpec, TensorSpec, as_example_inputs
from prunekit.pruning import check_groups, prune

SEGMENTATION = [
    ("fcn_resnet50", {"aux_loss": True}),
    ("fcn_resnet101", {}),
    ("deeplabv3_resnet50", {"aux_loss": True}),
    ("deeplabv3_resnet101", {}),
    ("deeplabv3_mobilenet_v3_large", {}),
    ("lraspp_mobilenet_v3_large", {}),
]
DETECTION_KWARGS = {
    "ssdlite320_mobilenet_v3_large": {},
    "fasterrcnn_mobilenet_v3_large_fpn": {"min_size": 128, "max_size": 160},
    "retinanet_resnet50_fpn": {"min_size": 128, "max_size": 160},
}


def _build(name: str, **kwargs: object) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_model(name, weights=None, weights_backbone=None, **kwargs)
    return randomize(model).double().eval()


def _oracle(model: nn.Module, example: ExampleInputs) -> None:
    graph = trace_channels(model, example)
    check_groups(model, example, graph)
    assert not graph.rule_errors, graph.rule_errors
    assert graph.prunable, graph.summary()
    assert_exact(model, example, graph, None)
    assert_exact(model, example, graph, 0.5)
    reference = outputs(model, example)
    assert_runs_and_trains(
        pruned_copy(model, choose(graph, model, 0.5, exact_only=False)), example, reference
    )


@pytest.mark.parametrize(("name", "kwargs"), SEGMENTATION, ids=[n for n, _ in SEGMENTATION])
def test_segmentation(name: str, kwargs: dict, tmp_path: Path) -> None:
    model = _build(name, **kwargs)
    spec = TensorSpec(((1, 3, 64, 64),))
    example = spec.make(1).to("cpu", torch.float64)
    _oracle(model, example)
    pruned = model
    prune(pruned, example, ratio=0.3)
    save(
        pruned,
        tmp_path / "a",
        recipe={"kind": "torchvision", "name": name, "kwargs": kwargs},
        input_spec=spec,
    )
    loaded, _ = load(tmp_path / "a")
    assert all(
        torch.equal(a, b)
        for a, b in zip(outputs(loaded, example), outputs(pruned, example), strict=True)
    )


class Trunk(nn.Module):
    """A detector without pre- and post-processing: backbone (+ FPN) feeding its dense head."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone = detector.backbone
        self.head = detector.rpn.head if hasattr(detector, "rpn") else detector.head

    def forward(self, x: torch.Tensor) -> object:
        return self.head(list(self.backbone(x).values()))


def _detector_parts(name: str, model: nn.Module) -> list[tuple[str, nn.Module, ExampleInputs]]:
    x = TensorSpec(((1, 3, 128, 128),)).make(1).to("cpu", torch.float64)
    parts = [("backbone", model.backbone, x), ("backbone+head", Trunk(model), x)]
    if name.startswith("fasterrcnn"):
        rois = torch.randn(6, 256, 7, 7, dtype=torch.float64)
        parts.append(("roi_heads.box_head", model.roi_heads.box_head, as_example_inputs(rois)))
    return parts


@pytest.mark.parametrize("name", list(DETECTION_KWARGS))
def test_detection_backbone_and_heads(name: str) -> None:
    model = _build(name, **DETECTION_KWARGS[name])
    for _part, module, example in _detector_parts(name, model):
        _oracle(module, example)


@pytest.mark.parametrize("name", list(DETECTION_KWARGS))
def test_whole_detector_prunes_runs_and_round_trips(name: str, tmp_path: Path) -> None:
    """Traced with a real forward pass (post-processing depends on values), pruned in place."""
    model = _build(name, **DETECTION_KWARGS[name]).float()
    spec = ImageListSpec((3, 128, 160))
    example = spec.make(1)
    before = sum(p.numel() for p in model.parameters())
    result = prune(model, example, ratio=0.3)
    assert result.graph.modes == ["eval"] and "real forward" in result.graph.notes[0]
    assert sum(p.numel() for p in model.parameters()) < 0.8 * before
    detections = outputs(model, example)
    assert detections  # boxes, scores, labels
    recipe = {"kind": "torchvision", "name": name, "kwargs": DETECTION_KWARGS[name]}
    save(model, tmp_path / "a", recipe=recipe, input_spec=spec)
    loaded, _ = load(tmp_path / "a")
    for a, b in zip(outputs(loaded, example), detections, strict=True):
        assert torch.equal(a, b)
