"""CubicSchedule against hand-computed values, and GradualPruner in a short training loop."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from prunekit.sparsity import CubicSchedule, GradualPruner, SparsityError

# ---------------------------------------------------------------------------------------------
# CubicSchedule

ZHU_GUPTA = CubicSchedule(0.0, 0.9, begin_step=0, end_step=100, frequency=10)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),  # s_f + (0 - s_f) * 1**3
        (9, 0.0),  # held from step 0
        (10, 0.2439),  # 0.9 * (1 - 0.9**3)
        (15, 0.2439),  # held from step 10
        (50, 0.7875),  # 0.9 * (1 - 0.5**3)
        (99, 0.8991),  # held from 90: 0.9 * (1 - 0.1**3)
        (100, 0.9),
        (1000, 0.9),
    ],
)
def test_cubic_values_match_the_formula(step: int, expected: float) -> None:
    assert ZHU_GUPTA.sparsity_at(step) == pytest.approx(expected, abs=1e-12)


def test_initial_sparsity_and_offset_begin() -> None:
    schedule = CubicSchedule(0.2, 0.8, begin_step=20, end_step=60, frequency=5)
    assert schedule.sparsity_at(19) == 0.0  # nothing pruned before the start, even with s_i > 0
    assert schedule.sparsity_at(20) == pytest.approx(0.2)
    # step 42 holds step 40, halfway: 0.8 + (0.2 - 0.8) * 0.5**3
    assert schedule.sparsity_at(42) == pytest.approx(0.725)
    assert schedule.sparsity_at(60) == 0.8


def test_value_is_held_between_update_steps_and_never_decreases() -> None:
    schedule = CubicSchedule(0.1, 0.7, begin_step=5, end_step=27, frequency=10)
    updates = [t for t in range(40) if schedule.is_update_step(t)]
    assert updates == [5, 15, 25, 27]  # end_step is an update even when off the grid
    values = [schedule.sparsity_at(t) for t in range(40)]
    for t in range(5, 40):
        last = max(u for u in updates if u <= t)
        assert values[t] == values[last]
    assert all(a <= b for a, b in pairwise(values))
    assert values[27] == 0.7


def test_one_shot_when_begin_equals_end() -> None:
    schedule = CubicSchedule(0.0, 0.6, begin_step=3, end_step=3, frequency=1)
    assert [schedule.sparsity_at(t) for t in (0, 2, 3, 4)] == [0.0, 0.0, 0.6, 0.6]
    assert [t for t in range(10) if schedule.is_update_step(t)] == [3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial_sparsity": -0.1}, r"initial_sparsity must be a number in \[0, 1\)"),
        ({"final_sparsity": 1.0}, r"final_sparsity must be a number in \[0, 1\), got 1.0"),
        (
            {"initial_sparsity": 0.6},
            r"initial_sparsity \(0.6\) must not exceed final_sparsity \(0.5\)",
        ),
        ({"begin_step": -1}, "begin_step must be an integer >= 0"),
        ({"end_step": 5}, "end_step must be an integer >= 10, got 5"),
        ({"frequency": 0}, "frequency must be an integer >= 1"),
        ({"frequency": 2.5}, "frequency must be an integer >= 1"),
    ],
)
def test_schedule_validation(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "initial_sparsity": 0.0,
        "final_sparsity": 0.5,
        "begin_step": 10,
        "end_step": 20,
        "frequency": 2,
        **kwargs,
    }
    with pytest.raises(SparsityError, match=message):
        CubicSchedule(**arguments)


# ---------------------------------------------------------------------------------------------
# GradualPruner


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3)
        self.norm = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.norm(self.conv(x))).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


WEIGHTS = {"conv.weight": 288, "fc1.weight": 128, "fc2.weight": 64}  # numel of each
TOTAL = sum(WEIGHTS.values())  # 480


def _net() -> _Net:
    torch.manual_seed(0)
    return _Net()


def _kept(masks: dict[str, Tensor]) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in masks.items()}


def _train_with(pruner: GradualPruner, model: nn.Module, steps: int) -> list[dict[str, Tensor]]:
    """Train for ``steps`` steps calling ``pruner.step()`` after each; returns masks per step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    pruner.attach(optimizer)
    x = torch.randn(8, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        pruner.step()
        history.append(pruner.masks)
    return history


def test_default_parameters_are_linear_and_conv_weights() -> None:
    pruner = GradualPruner(_net(), ZHU_GUPTA)
    assert set(pruner.masks) == set(WEIGHTS)
    assert all(mask.all() for mask in pruner.masks.values())  # nothing pruned before step 0


def test_global_pruner_reaches_the_final_sparsity_exactly_at_end_step() -> None:
    model = _net()
    schedule = CubicSchedule(0.0, 0.8, begin_step=2, end_step=12, frequency=4)
    pruner = GradualPruner(model, schedule)
    history = _train_with(pruner, model, steps=16)
    pruned = [TOTAL - sum(_kept(masks).values()) for masks in history]
    # call t handles step t; updates at 2, 6, 10 and 12 (the end)
    expected = [round(schedule.sparsity_at(t) * TOTAL) for t in range(16)]
    assert pruned == expected
    assert pruned[11] < round(0.8 * TOTAL) == pruned[12] == pruned[15] == 384
    assert pruner.step_count == 16
    # measured on the model: exactly the masked entries are zero, through 16 SGD steps
    assert pruner.current_sparsity() == 0.8
    for before, after in pairwise(history):
        for name in WEIGHTS:
            assert not (after[name] & ~before[name]).any(), "a pruned weight came back"


def test_step_returns_the_target_and_counts_calls() -> None:
    pruner = GradualPruner(_net(), ZHU_GUPTA)
    returned = [pruner.step() for _ in range(101)]
    assert returned[15] == pytest.approx(0.2439)
    assert returned[100] == 0.9
    assert pruner.current_sparsity() == pytest.approx(round(0.9 * TOTAL) / TOTAL)


def test_per_layer_finals_follow_scaled_curves() -> None:
    model = _net()
    schedule = CubicSchedule(0.0, 0.5, begin_step=0, end_step=10, frequency=5)
    finals = {"conv.weight": 0.25, "fc1.weight": 0.75}  # fc2 follows the schedule: 0.5
    pruner = GradualPruner(model, schedule, scope="layer", final_sparsity_by_name=finals)
    # step 5: schedule 0.5 * (1 - 0.5**3) = 0.4375, scaled by final / 0.5
    assert pruner.targets_at(5) == pytest.approx(
        {"conv.weight": 0.21875, "fc1.weight": 0.65625, "fc2.weight": 0.4375}
    )
    history = _train_with(pruner, model, steps=11)
    assert _kept(history[5]) == {
        "conv.weight": 288 - round(0.21875 * 288),  # 63 pruned
        "fc1.weight": 128 - 84,
        "fc2.weight": 64 - 28,
    }
    assert _kept(history[10]) == {"conv.weight": 216, "fc1.weight": 32, "fc2.weight": 32}
    for name, mask in history[10].items():
        assert (dict(model.named_parameters())[name][~mask] == 0).all()


def test_per_layer_finals_with_a_zero_schedule_use_its_shape() -> None:
    schedule = CubicSchedule(0.0, 0.0, begin_step=0, end_step=10, frequency=5)
    pruner = GradualPruner(
        _net(), schedule, scope="layer", final_sparsity_by_name={"fc1.weight": 0.5}
    )
    # shape 1 - 0.5**3 = 0.875 of the way at step 5
    assert pruner.targets_at(5) == pytest.approx(
        {"conv.weight": 0.0, "fc1.weight": 0.4375, "fc2.weight": 0.0}
    )
    assert pruner.targets_at(10)["fc1.weight"] == 0.5


def test_nm_constraint_is_applied_at_end_step() -> None:
    model = _net()
    schedule = CubicSchedule(0.0, 0.3, begin_step=0, end_step=6, frequency=2)
    pruner = GradualPruner(model, schedule, parameters=["fc1.weight", "fc2.weight"], nm=(2, 4))
    history = _train_with(pruner, model, steps=8)
    before, after = history[5], history[6]
    # before the end the masks are unstructured (some block of 4 keeps more than 2), yet the
    # ramp never took a block below 2: the end's cut finds 2 in every block
    assert any((m.reshape(-1, 4).sum(-1) > 2).any() for m in before.values())
    assert all((m.reshape(-1, 4).sum(-1) >= 2).all() for masks in history[:6]
               for m in masks.values())  # fmt: skip
    for name, mask in after.items():
        assert (mask.reshape(-1, 4).sum(-1) == 2).all()  # dim 1 blocks of the (out, in) weight
        assert not (mask & ~before[name]).any()
    assert sum(int((~m).sum()) for m in after.values()) == 96  # exactly half of 192
    assert all(torch.equal(history[7][n], after[n]) for n in after)  # no update after the end


def test_an_nm_ramp_past_what_n_of_m_keeps_still_ends_exactly_n_of_m() -> None:
    """A ramp aimed at 90% (past 2:4's 50%) stops at 2 in every block of 4: the ramp keeps
    each block's 2 best survivors, and the end cuts the rest."""
    model = _net()
    schedule = CubicSchedule(0.0, 0.9, begin_step=0, end_step=6, frequency=1)
    pruner = GradualPruner(model, schedule, parameters=["fc1.weight", "fc2.weight"], nm=(2, 4))
    history = _train_with(pruner, model, steps=8)
    for step in range(6):
        assert all((m.reshape(-1, 4).sum(-1) >= 2).all() for m in history[step].values())
    for name, mask in history[7].items():
        assert (mask.reshape(-1, 4).sum(-1) == 2).all()
        weight = dict(model.named_parameters())[name].detach()
        assert ((weight != 0).reshape(-1, 4).sum(-1) == 2).all()


def test_make_permanent_removes_every_hook() -> None:
    model = _net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    pruner = GradualPruner(model, CubicSchedule(0.0, 0.5, 0, 0, 1)).attach(optimizer)
    pruner.step()
    masks = pruner.make_permanent()
    assert sum(int((~m).sum()) for m in masks.values()) == 240
    assert not optimizer._optimizer_step_post_hooks
    assert not any(p._backward_hooks for p in model.parameters())
    assert pruner.current_sparsity() == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"final_sparsity_by_name": {"fc1.weight": 0.5}}, "needs scope='layer'"),
        (
            {"scope": "layer", "final_sparsity_by_name": {"fc1.bias": 0.5}},
            r"'fc1\.bias'.*valid names: conv\.weight, fc1\.weight, fc2\.weight",
        ),
        (
            {"scope": "layer", "final_sparsity_by_name": {"fc1.weight": 1.0}},
            r"final sparsity of 'fc1\.weight' must be a number in \[0, 1\)",
        ),
        ({"parameters": ["fc3.weight"]}, r"unknown parameter name\(s\): 'fc3\.weight'"),
        ({"parameters": "fc1.weight"}, "not the string 'fc1.weight'"),
        ({"parameters": []}, "parameters is empty"),
        ({"nm": (1, 3)}, r"divisible by 3; 'conv\.weight' has shape \(8, 4, 3, 3\)"),
        ({"parameters": ["fc1.weight"], "nm": (2, 5)}, r"divisible by 5; 'fc1\.weight'"),
        ({"parameters": ["fc1.weight"], "nm": (3, 2)}, "0 < n <= m"),
        ({"scope": "model"}, "scope must be 'global' or 'layer'"),
    ],
)
def test_pruner_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SparsityError, match=message):
        GradualPruner(_net(), ZHU_GUPTA, **kwargs)


def test_model_without_prunable_layers_is_an_error() -> None:
    with pytest.raises(SparsityError, match=r"no nn\.Linear or nn\.Conv\*d weight"):
        GradualPruner(nn.Sequential(nn.BatchNorm1d(3)), ZHU_GUPTA)


def test_gradual_pruner_ranks_by_a_custom_score() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))

    # a score that makes every weight of the first layer less important than any of the second
    def score(weights):  # type: ignore[no-untyped-def]
        return {
            n: w.detach().abs() + (0.0 if n == "0.weight" else 10.0) for n, w in weights.items()
        }

    schedule = CubicSchedule(0.0, 0.5, begin_step=0, end_step=0, frequency=1)
    pruner = GradualPruner(model, schedule, score=score)
    original = model[0].weight.detach().abs().clone()
    pruner.step()
    # 50% of 72 weights = 36 pruned, all from the first layer (48 weights), smallest |w| first
    first = model[0].weight.detach()
    assert int((first == 0).sum()) == 36 and int((model[2].weight == 0).sum()) == 0
    keep = pruner.masks["0.weight"]
    assert int(keep.sum()) == 12
    assert float(original[keep].min()) >= float(original[~keep].max())
