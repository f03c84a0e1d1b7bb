"""Dropping residual blocks: recognition, the dead-branch oracle, the branch mean, and blocks
in sensitivity, plans, latency tables and artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from prunekit.graph import trace_channels
from prunekit.measure.macs import count_macs
from prunekit.planning.apply import apply_plan
from prunekit.planning.lut import LatencyTable, profile_latency
from prunekit.planning.planner import Plan, PlanError, Target, make_plan
from prunekit.planning.sensitivity import OutputDivergence, Sensitivity, analyze_sensitivity
from prunekit.pruning import StructuredPruning, prune
from prunekit.pruning.blocks import (
    BlockError,
    DroppedResidual,
    branch_mean,
    drop_blocks,
    find_residual_blocks,
)

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
CALIBRATION = [torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))]


class Block(nn.Module):
    """``relu(x + bn(conv(relu(conv(x)))))``, or without the add when ``residual`` is False."""

    def __init__(self, channels: int, hidden: int, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.expand = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.project(self.relu(self.bn1(self.expand(x)))))
        return self.relu(x + out if self.residual else out)


def tiny(seed: int = 0, dead: tuple[int, ...] = ()) -> nn.Sequential:
    """Stem, three residual blocks, one plain block, head; ``dead`` blocks' branches output a
    constant (their last batch norm's scale is zero)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        Block(16, 32), Block(16, 48), Block(16, 32), Block(16, 16, residual=False),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.2, 2.0)
                m.bias.uniform_(-0.5, 0.5)
        model[-1].weight.mul_(20)  # confident logits: the KL divergence then tells blocks apart
        for i in dead:
            model[i].bn2.weight.zero_()
    return model.eval()


def test_residual_blocks_are_recognised_in_torchvision_models() -> None:
    assert find_residual_blocks(tiny()) == ["3", "4", "5"]
    mobilenet = torchvision.models.mobilenet_v2()
    assert find_residual_blocks(mobilenet) == [
        f"features.{i}" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)
    ]  # the inverted residuals with stride 1 and as many outputs as inputs
    assert find_residual_blocks(torchvision.models.resnet18()) == [
        "layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1",
    ]  # fmt: skip  # a block with a downsample path is not an identity skip


@pytest.mark.parametrize("kind", ["tiny", "mobilenet_v2", "resnet18"])
def test_dropping_dead_branches_is_exact_and_undo_restores(kind: str) -> None:
    if kind == "tiny":
        model: nn.Module = tiny(dead=(3, 5))
        names = ["3", "5"]
    else:
        torch.manual_seed(0)
        model = getattr(torchvision.models, kind)(num_classes=10).eval()
        names = find_residual_blocks(model)[:3]
        for name in names:
            block = model.get_submodule(name)
            last_bn = block.conv[-1] if kind == "mobilenet_v2" else block.bn2
            with torch.no_grad():
                last_bn.weight.zero_()
                last_bn.bias.uniform_(-1, 1)
    originals = [model.get_submodule(n) for n in names]
    with torch.no_grad():
        dense = model(X)
    record = drop_blocks(model, names, [X])
    assert all(isinstance(model.get_submodule(n), DroppedResidual) for n in names)
    with torch.no_grad():
        torch.testing.assert_close(model(X), dense, rtol=0, atol=1e-5)
    record.undo()
    assert [model.get_submodule(n) for n in names] == originals
    with torch.no_grad():
        assert torch.equal(model(X), dense)


def test_the_shift_is_the_branch_mean_per_channel() -> None:
    model = tiny()
    inputs = []
    handle = model[4].register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    with torch.no_grad():
        model(CALIBRATION[0])
        model(X)
        handle.remove()
        block = model[4]
        branches = [
            block.bn2(block.project(block.relu(block.bn1(block.expand(x))))) for x in inputs
        ]
    expected = torch.cat([b.permute(1, 0, 2, 3).reshape(16, -1) for b in branches], 1).mean(1)
    shift = branch_mean(model, "4", [CALIBRATION[0], X])
    assert shift.shape == (1, 16, 1, 1)
    torch.testing.assert_close(shift.flatten(), expected, rtol=1e-5, atol=1e-6)
    drop_blocks(model, ["4"], [CALIBRATION[0], X])
    torch.testing.assert_close(model[4].shift, shift)
    with torch.no_grad():  # the block is now relu(x + shift)
        x = torch.randn(1, 16, 4, 4)
        torch.testing.assert_close(model[4](x), torch.relu(x + shift))


def test_refusals_leave_the_model_unchanged() -> None:
    model = tiny()
    before = [type(m) for m in model]
    with pytest.raises(BlockError, match=r"'6'.*not a residual block.*3, 4, 5"):
        drop_blocks(model, ["3", "6"], [X])
    with pytest.raises(BlockError, match="not a residual block"):
        drop_blocks(model, ["nope"], [X])
    assert [type(m) for m in model] == before
    with pytest.raises(BlockError, match="never called"):
        drop_blocks(nn.Sequential(model, nn.Identity()), ["0.3"], [])
    assert [type(m) for m in model] == before


def test_channels_of_a_model_with_dropped_blocks_can_still_be_pruned() -> None:
    model = tiny()
    drop_blocks(model, ["4"], [X])
    prune(model, X, StructuredPruning(ratio=0.5))
    assert model[4].shift.shape == (1, 8, 1, 1)  # sliced with the residual stream it joins
    assert model(X).shape == (2, 10)


# ----------------------------------------------------------------------------- planning
@pytest.fixture(scope="module")
def dead_sensitivity() -> tuple[nn.Module, Sensitivity]:
    model = tiny(dead=(4,))
    graph = trace_channels(model, X[:1])
    sens = analyze_sensitivity(model, X[:1], graph, OutputDivergence(model, CALIBRATION),
                               ratios=[0.25, 0.5, 0.75])  # fmt: skip
    return model, sens


def test_sensitivity_measures_each_block_alone(
    dead_sensitivity: tuple[nn.Module, Sensitivity], tmp_path: Path
) -> None:
    model, sens = dead_sensitivity
    assert list(sens.blocks) == ["3", "4", "5"]
    assert sens.blocks["4"].drop == pytest.approx(0.0, abs=1e-9)  # a dead branch costs nothing
    assert sens.blocks["3"].drop > 1e-5 and sens.blocks["5"].drop > 1e-5
    assert sens.blocks["4"].groups == ["4.expand"]  # its hidden channels go with it
    # the MACs left are exact: the block alone dropped, counted
    record = drop_blocks(model, ["3"], CALIBRATION)
    expected = count_macs(model, X[:1]).total / sens.base_macs
    record.undo()
    assert sens.blocks["3"].macs_fraction == pytest.approx(expected)
    # save -> load round trip, and a resumed run measures nothing again
    path = tmp_path / "sens.json"
    sens.save(path)
    assert Sensitivity.load(path).blocks == sens.blocks
    calls = []

    def metric(m: nn.Module) -> float:
        calls.append(1)
        return 0.0

    metric.__name__ = sens.metric
    graph = trace_channels(model, X[:1])
    again = analyze_sensitivity(model, X[:1], graph, metric, ratios=[0.25, 0.5, 0.75], cache=path)
    assert calls == [] and again.blocks == sens.blocks


def test_a_plan_drops_the_dead_block_first_and_applying_it_is_exact(
    dead_sensitivity: tuple[nn.Module, Sensitivity],
) -> None:
    model, sens = dead_sensitivity
    graph = trace_channels(model, X[:1])
    # a budget that dropping block 4 alone meets
    goal = sens.blocks["4"].macs_fraction + 0.005
    plan = make_plan(model, X[:1], graph, sens, Target("macs", goal))
    assert plan.drop_blocks == ["4"]
    assert plan.predicted_drop == pytest.approx(0.0, abs=1e-9)
    assert plan.keep["4.expand"] == 48  # inside the dropped block: left as it was
    restored = Plan.from_dict(plan.to_dict())
    assert restored.drop_blocks == ["4"]
    pruned = tiny(dead=(4,))
    with torch.no_grad():
        dense = pruned(X)
    apply_plan(pruned, X[:1], restored, batches=CALIBRATION)
    assert isinstance(pruned[4], DroppedResidual)
    with torch.no_grad():
        torch.testing.assert_close(pruned(X), dense, rtol=0, atol=1e-5)
    macs = count_macs(pruned, X[:1]).total / count_macs(model, X[:1]).total
    assert macs == pytest.approx(plan.achieved["macs_fraction"])
    # without blocks, the same budget costs a predicted drop
    channels_only = make_plan(model, X[:1], graph, sens, Target("macs", goal), blocks=False)
    assert channels_only.drop_blocks == [] and channels_only.predicted_drop > 0


def test_a_plan_naming_a_block_the_model_lacks_is_refused(
    dead_sensitivity: tuple[nn.Module, Sensitivity],
) -> None:
    model, sens = dead_sensitivity
    graph = trace_channels(model, X[:1])
    plan = make_plan(model, X[:1], graph, sens, Target("macs", sens.blocks["4"].macs_fraction))
    plan.drop_blocks = ["6"]
    target = tiny()
    with pytest.raises(PlanError, match="drops 6"):
        apply_plan(target, X[:1], plan)
    assert not any(isinstance(m, DroppedResidual) for m in target)


def test_latency_tables_time_dropped_blocks_and_predict_them() -> None:
    model = tiny()
    table = profile_latency(model, X[:1], fractions=(1.0, 0.5), method="modules")
    assert set(table.blocks) == {"3", "4", "5"}
    assert all(0 < ms < table.base_ms for ms in table.blocks.values())
    both = table.predict({}, dropped=["3", "5"])
    assert both == pytest.approx(table.blocks["3"] + table.blocks["5"] - table.base_ms)
    restored = LatencyTable.from_dict(table.to_dict())
    assert restored.blocks == table.blocks
    with pytest.raises(Exception, match="not profiled"):
        table.predict({}, dropped=["6"])


def test_a_saved_model_with_dropped_blocks_loads_back_identical(tmp_path: Path) -> None:
    from prunekit import artifact

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    example = torch.randn(1, 3, 32, 32)
    drop_blocks(model, ["features.3", "features.12"], [example])
    prune(model, example, StructuredPruning(ratio=0.3))
    recipe = {"kind": "torchvision", "name": "mobilenet_v2", "kwargs": {"num_classes": 10}}
    artifact.save(model, tmp_path / "m", recipe=recipe)
    loaded, manifest = artifact.load(tmp_path / "m")
    assert manifest["dropped_blocks"] == ["features.3", "features.12"]
    assert isinstance(loaded.features[3], DroppedResidual)
    with torch.no_grad():
        assert torch.equal(loaded(example), model(example))
