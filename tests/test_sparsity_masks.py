"""Magnitude and N:M masks (exact counts, ordering invariants) and MaskSet through training."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from prunekit.sparsity import MaskSet, SparsityError, magnitude_masks, nm_mask


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _weights() -> dict[str, Tensor]:
    # different scales, so global and layer scopes give clearly different allocations
    return {
        "small": torch.randn(10, 10, generator=_gen(0)) * 0.1,
        "large": torch.randn(5, 8, generator=_gen(1)) * 10.0,
        "conv": torch.randn(4, 3, 3, 3, generator=_gen(2)),
    }


def _pruned(mask: Tensor) -> int:
    return int((~mask).sum())


# ---------------------------------------------------------------------------------------------
# magnitude_masks


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.77, 0.99])
def test_layer_scope_prunes_round_s_times_numel_in_each_tensor(sparsity: float) -> None:
    weights = _weights()
    masks = magnitude_masks(weights, sparsity, scope="layer")
    for name, weight in weights.items():
        assert masks[name].dtype == torch.bool and masks[name].shape == weight.shape
        assert _pruned(masks[name]) == round(sparsity * weight.numel())
        kept, pruned = weight.abs()[masks[name]], weight.abs()[~masks[name]]
        if kept.numel() and pruned.numel():
            assert kept.min() >= pruned.max()


def test_layer_scope_mapping_gives_unnamed_tensors_zero() -> None:
    weights = _weights()
    masks = magnitude_masks(weights, {"small": 0.3, "conv": 0.5}, scope="layer")
    assert _pruned(masks["small"]) == 30
    assert _pruned(masks["conv"]) == 54  # round(0.5 * 108)
    assert _pruned(masks["large"]) == 0


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_global_scope_prunes_exact_total_with_one_threshold(sparsity: float) -> None:
    weights = _weights()
    total = sum(w.numel() for w in weights.values())  # 100 + 40 + 108 = 248
    masks = magnitude_masks(weights, sparsity)
    assert sum(_pruned(m) for m in masks.values()) == round(sparsity * total)
    kept = torch.cat([w.abs()[masks[n]] for n, w in weights.items()])
    pruned = torch.cat([w.abs()[~masks[n]] for n, w in weights.items()])
    assert kept.min() >= pruned.max()


def test_global_scope_takes_from_the_small_tensor_first() -> None:
    weights = {
        "small": torch.rand(10, 10, generator=_gen(0)) * 0.1,  # all below 0.1
        "large": torch.rand(5, 8, generator=_gen(1)) + 1.0,  # all at least 1
    }
    masks = magnitude_masks(weights, 100 / 140)
    assert _pruned(masks["small"]) == 100
    assert _pruned(masks["large"]) == 0
    # the same sparsity per layer spreads the pruning evenly instead
    layer = magnitude_masks(weights, 100 / 140, scope="layer")
    assert (_pruned(layer["small"]), _pruned(layer["large"])) == (71, 29)


def test_ties_are_broken_by_position_and_exactly_k_are_pruned() -> None:
    weights = {"a": torch.ones(3, 2), "b": torch.ones(4)}
    masks = magnitude_masks(weights, 0.5)  # 5 of 10 pruned, all tied at |w| = 1
    assert masks["a"].flatten().tolist() == [False] * 5 + [True]
    assert masks["b"].tolist() == [True] * 4
    # deterministic: the same answer again
    again = magnitude_masks(weights, 0.5)
    assert all(torch.equal(masks[n], again[n]) for n in masks)


def test_scores_replace_magnitude() -> None:
    weights = {"w": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    scores = {"w": torch.tensor([4.0, 3.0, 2.0, 1.0])}
    masks = magnitude_masks(weights, 0.5, scores=scores)
    assert masks["w"].tolist() == [True, True, False, False]
    # scores are used as given, not through abs(): the negative one is least important
    signed = magnitude_masks(
        weights, 0.25, scope="layer", scores={"w": torch.tensor([1.0, -5, 2, 3])}
    )
    assert signed["w"].tolist() == [True, False, True, True]


def test_empty_weights_give_empty_masks() -> None:
    assert magnitude_masks({}, 0.5) == {}


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, math.nan, True, "0.5"])
def test_sparsity_out_of_range_is_rejected(bad: object) -> None:
    with pytest.raises(SparsityError, match=r"sparsity must be a number in \[0, 1\)"):
        magnitude_masks(_weights(), bad)  # type: ignore[arg-type]


def test_bad_sparsity_in_a_mapping_names_the_tensor() -> None:
    with pytest.raises(
        SparsityError, match=r"sparsity of 'large' must be a number in \[0, 1\), got 1.0"
    ):
        magnitude_masks(_weights(), {"small": 0.5, "large": 1.0}, scope="layer")


def test_unknown_names_in_a_mapping_list_the_valid_names() -> None:
    with pytest.raises(SparsityError, match=r"'typo'.*valid names: conv, large, small"):
        magnitude_masks(_weights(), {"typo": 0.5}, scope="layer")


def test_global_scope_rejects_a_mapping() -> None:
    with pytest.raises(SparsityError, match="scope='layer'"):
        magnitude_masks(_weights(), {"small": 0.5}, scope="global")


def test_bad_scope_and_bad_scores_are_rejected() -> None:
    weights = {"w": torch.ones(4)}
    with pytest.raises(SparsityError, match="scope must be 'global' or 'layer'"):
        magnitude_masks(weights, 0.5, scope="tensor")  # type: ignore[arg-type]
    with pytest.raises(SparsityError, match=r"score of 'w' has shape \(2,\)"):
        magnitude_masks(weights, 0.5, scores={"w": torch.ones(2)})
    with pytest.raises(SparsityError, match="scores are missing for 'w'"):
        magnitude_masks(weights, 0.5, scores={})
    with pytest.raises(SparsityError, match="importance of 'w' contains NaN"):
        magnitude_masks({"w": torch.tensor([1.0, math.nan])}, 0.5)


# ---------------------------------------------------------------------------------------------
# nm_mask


def test_2_4_mask_golden() -> None:
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.0, 0.5, -0.1, 0.2]])
    assert nm_mask(w, 2, 4).int().tolist() == [[0, 1, 1, 0, 0, 1, 0, 1]]
    # along dim 0 of the transpose: the same pattern
    assert torch.equal(nm_mask(w.T, 2, 4, dim=0), nm_mask(w, 2, 4).T)


def test_nm_ties_keep_the_earlier_elements() -> None:
    assert nm_mask(torch.zeros(8), 1, 4).int().tolist() == [1, 0, 0, 0, 1, 0, 0, 0]


@st.composite
def _nm_cases(draw: st.DrawFn) -> tuple[Tensor, int, int, int]:
    m = draw(st.integers(1, 6))
    n = draw(st.integers(1, m))
    ndim = draw(st.integers(1, 3))
    dim = draw(st.integers(-ndim, ndim - 1))
    shape = [draw(st.integers(1, 4)) for _ in range(ndim)]
    shape[dim] = m * draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    # no exact zeros, so "kept" and "non-zero after applying" coincide
    weight = torch.randn(shape, generator=_gen(seed))
    weight = torch.where(weight == 0, torch.ones_like(weight), weight)
    return weight, n, m, dim


@settings(max_examples=60, deadline=None)
@given(_nm_cases())
def test_nm_mask_keeps_exactly_the_n_largest_of_every_block(
    case: tuple[Tensor, int, int, int],
) -> None:
    weight, n, m, dim = case
    mask = nm_mask(weight, n, m, dim=dim)
    assert mask.shape == weight.shape and mask.dtype == torch.bool

    def blocks(t: Tensor) -> Tensor:
        moved = t.movedim(dim, -1)
        return moved.reshape(-1, m)  # consecutive along dim, since dim is now the last axis

    kept, magnitude = blocks(mask), blocks(weight.abs())
    applied = blocks(weight * mask)
    assert (kept.sum(-1) == n).all()
    assert ((applied != 0).sum(-1) == n).all()
    if n < m:
        min_kept = torch.where(kept, magnitude, math.inf).amin(-1)
        max_pruned = torch.where(kept, -math.inf, magnitude).amax(-1)
        assert (min_kept >= max_pruned).all()


def test_nm_errors() -> None:
    w = torch.randn(3, 6)
    with pytest.raises(SparsityError, match=r"size along dim 0 to be divisible by 4.*\(3, 6\)"):
        nm_mask(w, 2, 4, dim=0)
    with pytest.raises(SparsityError, match="0 < n <= m"):
        nm_mask(w, 4, 3)
    with pytest.raises(SparsityError, match="0 < n <= m"):
        nm_mask(w, 0, 3)
    with pytest.raises(SparsityError, match="dim 2 is out of range"):
        nm_mask(w, 1, 3, dim=2)
    with pytest.raises(SparsityError, match="at least one dimension"):
        nm_mask(torch.tensor(1.0), 1, 1)


# ---------------------------------------------------------------------------------------------
# MaskSet


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    x = torch.randn(32, 8, generator=_gen(3))
    y = torch.randn(32, 4, generator=_gen(4))
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def _half_masks(model: nn.Module) -> dict[str, Tensor]:
    weights = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    return magnitude_masks(weights, 0.5, scope="layer")


def _no_hooks(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    tensor_hooks = any(p._backward_hooks for p in model.parameters())
    return not optimizer._optimizer_step_post_hooks and not tensor_hooks


@pytest.mark.parametrize(
    ("make_optimizer", "state_key"),
    [
        (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1), "momentum_buffer"),
        (lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.1), "exp_avg"),
        (lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1), "exp_avg"),
    ],
    ids=["sgd-momentum-wd", "adam-wd", "adamw"],
)
def test_masked_weights_stay_zero_through_training(make_optimizer, state_key: str) -> None:  # type: ignore[no-untyped-def]
    model = _mlp()
    masks = _half_masks(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_optimizer(model.parameters())
    with MaskSet(model, masks).attach(optimizer) as mask_set:
        assert optimizer._optimizer_step_post_hooks  # attached while inside
        _train(model, optimizer, steps=5)
        params = dict(model.named_parameters())
        for name, mask in masks.items():
            assert (params[name][~mask] == 0).all()
            assert (params[name][mask] != before[name][mask]).all()
            # gradient hooks kept the optimizer's running state zero for pruned entries
            assert (optimizer.state[params[name]][state_key][~mask] == 0).all()
        assert mask_set.overall_sparsity() == 0.5
    assert _no_hooks(model, optimizer)


def test_detach_stops_enforcing_the_masks() -> None:
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    masks = _half_masks(model)
    mask_set = MaskSet(model, masks).attach(optimizer)
    _train(model, optimizer, steps=1)
    mask_set.detach()
    assert _no_hooks(model, optimizer)
    _train(model, optimizer, steps=1)
    weight, pruned = model[0].weight, ~masks["0.weight"]
    assert weight.grad is not None
    # with no hook left, gradients reach pruned weights (dead ReLU units get none) and nothing
    # re-zeroes them: after one plain SGD step from zero, w = -lr * grad
    assert (weight.grad[pruned] != 0).sum() > 10
    assert torch.equal(weight[pruned], -0.1 * weight.grad[pruned])


def test_make_permanent_returns_masks_and_leaves_plain_zeros() -> None:
    model = _mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    masks = _half_masks(model)
    mask_set = MaskSet(model, masks).attach(optimizer)
    _train(model, optimizer, steps=2)
    final = mask_set.make_permanent()
    assert final.keys() == masks.keys()
    assert all(torch.equal(final[n], masks[n]) for n in masks)
    assert _no_hooks(model, optimizer)
    assert not mask_set.attached
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert (model[2].weight[~masks["2.weight"]] == 0).all()


def test_apply_sparsity_and_update() -> None:
    model = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 2, bias=False))
    nn.init.ones_(model[0].weight)
    nn.init.ones_(model[1].weight)
    first = torch.tensor([[True, False, True, False], [True, True, True, True]])
    mask_set = MaskSet(model, {"0.weight": first})
    assert model[0].weight.sum() == 8  # not applied until asked
    mask_set.apply()
    assert model[0].weight.sum() == 6
    assert mask_set.sparsity() == {"0.weight": 0.25}

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mask_set.attach(optimizer)
    second = torch.tensor([[False, True], [True, True]])
    mask_set.update({"1.weight": second})  # extends, applies, and hooks the new parameter
    assert model[1].weight.sum() == 3
    assert mask_set.sparsity() == {"0.weight": 0.25, "1.weight": 0.25}
    assert mask_set.overall_sparsity() == pytest.approx(3 / 12)
    assert model[1].weight._backward_hooks
    model(torch.ones(1, 4)).sum().backward()
    assert model[1].weight.grad is not None and model[1].weight.grad[0, 0] == 0
    mask_set.detach()


def test_masks_are_copied_and_snapshots_stay_valid() -> None:
    model = nn.Linear(2, 2, bias=False)
    mask = torch.tensor([[True, False], [True, True]])
    mask_set = MaskSet(model, {"weight": mask})
    mask[0, 0] = False  # the caller changing its tensor does not change the MaskSet
    snapshot = mask_set.masks
    mask_set.update({"weight": torch.zeros(2, 2, dtype=torch.bool)})
    assert snapshot["weight"].tolist() == [[True, False], [True, True]]
    assert mask_set.sparsity() == {"weight": 1.0}


def test_mask_set_validation() -> None:
    model = _mlp()
    with pytest.raises(SparsityError, match=r"'fc\.weight'.*valid names: 0\.bias, 0\.weight"):
        MaskSet(model, {"fc.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(
        SparsityError, match=r"mask of '0\.weight' has shape \(8, 16\), the parameter \(16, 8\)"
    ):
        MaskSet(model, {"0.weight": torch.ones(8, 16, dtype=torch.bool)})
    with pytest.raises(
        SparsityError, match=r"mask of '0\.weight' must be a bool tensor, got torch\.float32"
    ):
        MaskSet(model, {"0.weight": torch.ones(16, 8)})
