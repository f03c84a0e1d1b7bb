"""The dead-channel oracle over every torchvision classification model up to 120 M parameters.

For each model: remove one channel, then half of the channels, of every exactly-prunable
group and compare with the dead-channel model (float64, ``assert_close``); then prune half
of every group including the mixing ones (LayerNorm/GroupNorm streams) and check shapes,
finite outputs and backward; then save -> load must give identical outputs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from torchvision.models import get_model, get_model_weights

from _oracle import assert_exact, assert_runs_and_trains, choose, outputs, pruned_copy, randomize
from prunekit.artifact import load, save
from prunekit.graph import trace_channels
from prunekit.inputs import TensorSpec
from prunekit.pruning import check_groups

MAX_PARAMS = 120_000_000
SIDE = {"inception_v3": 299, "maxvit_t": 224}  # inputs these models need (the aux head); else 64


def _zoo() -> list[str]:
    names = []
    for name in tvm.list_models(module=tvm):
        if next(iter(get_model_weights(name))).meta["num_params"] <= MAX_PARAMS:
            names.append(name)
    return names


ZOO = _zoo()


def _build(name: str) -> tuple[torch.nn.Module, dict, TensorSpec]:
    kwargs = {"image_size": 64} if name.startswith("vit_") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_model(name, weights=None, **kwargs)
    side = SIDE.get(name, 64)
    recipe = {"kind": "torchvision", "name": name, "kwargs": kwargs}
    return randomize(model).double().eval(), recipe, TensorSpec(((1, 3, side, side),))


def test_zoo_covers_the_classification_models() -> None:
    assert len(ZOO) == 65
    assert {"vit_b_16", "swin_v2_b", "maxvit_t", "densenet201", "efficientnet_v2_l"} <= set(ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_oracle(name: str, tmp_path: Path) -> None:
    model, recipe, spec = _build(name)
    example = spec.make(1).to("cpu", torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    graph = trace_channels(model, example)
    check_groups(model, example, graph)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), (
        "tracing changed the model"
    )
    assert not graph.rule_errors, graph.rule_errors
    assert graph.prunable, graph.summary()

    report = assert_exact(model, example, graph, None)
    assert report.removed == report.exact_groups
    assert_exact(model, example, graph, 0.5)

    reference = outputs(model, example)
    pruned = pruned_copy(model, choose(graph, model, 0.5, exact_only=False))
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert_runs_and_trains(pruned, example, reference)

    save(pruned, tmp_path / "artifact", recipe=recipe, input_spec=spec)
    loaded, _ = load(tmp_path / "artifact")
    for a, b in zip(outputs(loaded, example), outputs(pruned, example), strict=True):
        assert torch.equal(a, b)
