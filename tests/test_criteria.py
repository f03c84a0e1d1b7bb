"""Importance criteria (prunekit.criteria) against values computed by hand."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.criteria import (
    CRITERIA,
    DATA_CRITERIA,
    CriterionError,
    group_scores,
)
from prunekit.errors import PrunekitError
from prunekit.graph import ChannelGraph, Group, trace_channels
from prunekit.inputs import ExampleInputs
from prunekit.pruning import PruneConfigError, StructuredPruning, prune
from prunekit.pruning.config import DATA_IMPORTANCE, IMPORTANCE
from prunekit.pruning.importance import atom_scores


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise_norm(bn: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        n = bn.weight.numel()
        bn.weight.copy_(torch.randn(n, generator=gen))
        bn.bias.copy_(torch.randn(n, generator=gen) * 0.5 + 0.5)
        bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
        bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def _mlp(hidden: int = 6, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(4, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 3)
    )
    _randomise_norm(model[1], _gen(seed + 1))
    return model.eval()


class ConvNet(nn.Module):
    """c1+bn1 and c2+bn2 share one residual group; c3 (no BatchNorm) feeds a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.c3 = nn.Conv2d(4, 5, 1)
        self.fc = nn.Linear(5, 2)
        _randomise_norm(self.bn1, _gen(1))
        _randomise_norm(self.bn2, _gen(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(self.c1(x)))
        b = torch.relu(self.bn2(self.c2(a)) + a)
        c = torch.relu(self.c3(b))
        return self.fc(c.mean((2, 3)))


def _group_with(graph: ChannelGraph, module: str) -> Group:
    (group,) = [g for g in graph.prunable if g.name == module]
    return group


def _batches(
    shape: tuple[int, ...], classes: int, sizes: tuple[int, ...] = (3, 5)
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = _gen(7)
    return [
        (torch.randn(n, *shape, generator=gen), torch.randint(0, classes, (n,), generator=gen))
        for n in sizes
    ]


# --- registry and configuration ---------------------------------------------------------------


def test_registry_names_every_criterion_and_the_config_accepts_them() -> None:
    names = {"l1", "l2", "taylor", "bn_scale", "mean_activation", "apoz", "random"}
    assert set(CRITERIA) == names == set(IMPORTANCE)
    assert DATA_CRITERIA == {"taylor", "mean_activation", "apoz"} == set(DATA_IMPORTANCE)
    for name in names:
        assert StructuredPruning(importance=name).importance == name
    with pytest.raises(PruneConfigError, match="unknown importance 'fisher'"):
        StructuredPruning(importance="fisher")


def test_unknown_criterion_lists_the_valid_ones() -> None:
    model = _mlp()
    graph = trace_channels(model, torch.randn(2, 4))
    with pytest.raises(CriterionError) as info:
        group_scores(model, graph, "fisher")
    message = str(info.value)
    assert "'fisher'" in message
    assert all(name in message for name in CRITERIA)
    assert isinstance(info.value, PruneConfigError)
    assert isinstance(info.value, PrunekitError)


@pytest.mark.parametrize("criterion", sorted(DATA_CRITERIA))
def test_data_criteria_without_calibration_name_what_is_missing(criterion: str) -> None:
    model = _mlp()
    graph = trace_channels(model, torch.randn(2, 4))
    with pytest.raises(CriterionError, match=rf"{criterion}.*needs calibration data"):
        group_scores(model, graph, criterion)


def test_malformed_calibration_data_is_refused() -> None:
    model = _mlp()
    x = torch.randn(2, 4)
    graph = trace_channels(model, x)
    with pytest.raises(CriterionError, match="iterable of batches"):
        group_scores(model, graph, "apoz", calibration=x)  # a bare tensor, not a list of batches
    with pytest.raises(CriterionError, match="holds no batch"):
        group_scores(model, graph, "apoz", calibration=[])
    with pytest.raises(CriterionError, match="needs targets"):
        group_scores(model, graph, "taylor", calibration=[x])
    with pytest.raises(CriterionError, match="only apply to the taylor"):
        group_scores(model, graph, "apoz", calibration=[x], loss_fn=F.mse_loss)


# --- magnitude ----------------------------------------------------------------------------------


# the weight slices of each group, written out by hand from ConvNet's wiring:
# (parameter, dimension along which the group's channels lie)
CONVNET_SLICES = {
    "c1": [
        ("c1.weight", 0),
        ("c1.bias", 0),
        ("bn1.weight", 0),
        ("bn1.bias", 0),
        ("c2.weight", 0),
        ("c2.weight", 1),
        ("c2.bias", 0),
        ("bn2.weight", 0),
        ("bn2.bias", 0),
        ("c3.weight", 1),
    ],
    "c3": [("c3.weight", 0), ("c3.bias", 0), ("fc.weight", 1)],
}


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_magnitude_sums_each_slice_norm_normalised_by_its_mean(kind: str) -> None:
    model = ConvNet()
    graph = trace_channels(model, torch.randn(2, 3, 6, 6))
    scores = group_scores(model, graph, kind)
    params = dict(model.named_parameters())
    assert {g.name for g in graph.prunable} == set(CONVNET_SLICES)
    for name, slices in CONVNET_SLICES.items():
        expected = 0.0
        for owner, dim in slices:
            w = params[owner].detach().double().movedim(dim, 0)
            w = w.reshape(w.shape[0], -1)
            norm = w.abs().sum(1) if kind == "l1" else w.pow(2).sum(1).sqrt()
            expected = expected + norm / norm.mean()  # every slice has a non-zero norm here
        np.testing.assert_allclose(scores[_group_with(graph, name).id], expected.numpy(), rtol=1e-6)
    assert scores.fallback == {}


# --- Taylor -------------------------------------------------------------------------------------


def _mse_to_onehot(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, F.one_hot(y, out.shape[1]).float())


@pytest.mark.parametrize("loss", ["default", "loss_fn", "batch_loss"])
def test_taylor_matches_the_formula_computed_with_autograd(loss: str) -> None:
    model = _mlp()
    batches = _batches((4,), 3)
    graph = trace_channels(model, batches[0][0])
    (group,) = graph.prunable
    kwargs: dict[str, Any] = {}
    if loss == "loss_fn":
        kwargs["loss_fn"] = _mse_to_onehot
    elif loss == "batch_loss":
        kwargs["batch_loss"] = lambda m, batch: m(batch[0]).pow(2).sum()
    scores = group_scores(model, graph, "taylor", calibration=batches, **kwargs)

    w0, b0, gamma, beta, w3 = (
        model[0].weight,
        model[0].bias,
        model[1].weight,
        model[1].bias,
        model[3].weight,
    )
    terms = {k: torch.zeros(6, dtype=torch.float64) for k in ("w0", "b0", "gamma", "beta", "w3")}
    for x, y in batches:
        out = model(x)
        if loss == "default":
            value = F.cross_entropy(out, y)
        elif loss == "loss_fn":
            value = _mse_to_onehot(out, y)
        else:
            value = out.pow(2).sum()
        g = torch.autograd.grad(value, [w0, b0, gamma, beta, w3])
        per_channel = {
            "w0": (w0 * g[0]).sum(1),  # rows of the first layer
            "b0": b0 * g[1],
            "gamma": gamma * g[2],
            "beta": beta * g[3],
            "w3": (w3 * g[4]).sum(0),  # columns of the last layer
        }
        for k, v in per_channel.items():
            terms[k] += v.detach().double() ** 2
    expected = np.zeros(6)
    for v in terms.values():  # each layer divided by its mean over the non-zero atoms
        mean = (v / len(batches)).numpy()
        expected += mean / mean[mean > 0].mean()
    np.testing.assert_allclose(scores[group.id], expected, rtol=1e-5)
    assert scores.criterion == "taylor" and scores.fallback == {}


def test_taylor_leaves_the_model_as_it_was() -> None:
    model = _mlp().train()
    grad = torch.full_like(model[0].weight, 3.0)
    model[0].weight.grad = grad
    model[3].bias.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _batches((4,), 3)
    graph = trace_channels(model, batches[0][0])
    group_scores(model, graph, "taylor", calibration=batches)
    assert model.training  # calibration ran in eval mode, then the mode was restored
    assert model[0].weight.grad is grad
    assert all(p.grad is None for n, p in model.named_parameters() if n != "0.weight")
    assert not model[3].bias.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "3.bias")
    for k, v in model.state_dict().items():  # BatchNorm statistics were not updated
        assert torch.equal(v, state[k]), k


# --- BatchNorm scale ----------------------------------------------------------------------------


def test_bn_scale_is_abs_gamma() -> None:
    model = _mlp()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0, 0.0, 1.5, -0.25, 3.0]))
    graph = trace_channels(model, torch.randn(2, 4))
    (group,) = graph.prunable
    scores = group_scores(model, graph, "bn_scale")
    np.testing.assert_allclose(scores[group.id], [0.5, 2.0, 0.0, 1.5, 0.25, 3.0])
    assert scores.fallback == {}


def test_bn_scale_sums_gammas_and_reports_groups_without_norm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = ConvNet()
    graph = trace_channels(model, torch.randn(2, 3, 6, 6))
    residual, head = _group_with(graph, "c1"), _group_with(graph, "c3")
    with caplog.at_level(logging.WARNING, logger="prunekit.criteria"):
        scores = group_scores(model, graph, "bn_scale")
    expected = (model.bn1.weight.abs() + model.bn2.weight.abs()).detach().numpy()
    np.testing.assert_allclose(scores[residual.id], expected, rtol=1e-6)
    # c3 has no BatchNorm: L1 group magnitude, and said so
    assert set(scores.fallback) == {head.id}
    assert "normalisation" in scores.fallback[head.id]
    np.testing.assert_allclose(
        scores[head.id], atom_scores(head, dict(model.named_parameters()), "l1")
    )
    assert scores[head.id].any()
    assert "c3" in caplog.text and "L1 magnitude" in caplog.text


# --- activation statistics ----------------------------------------------------------------------


def _pooled(outputs: list[torch.Tensor], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of relu(y) and fraction of relu(y) == 0 per channel, over all batches' elements."""
    y = torch.cat([o.movedim(dim, -1).reshape(-1, o.shape[dim]) for o in outputs])
    return y.clamp_min(0).mean(0).double().numpy(), (y <= 0).double().mean(0).numpy()


def test_activation_statistics_of_a_conv_net_match_a_manual_forward() -> None:
    model = ConvNet().eval()
    gen = _gen(3)
    xs = [torch.randn(n, 3, 6, 6, generator=gen) for n in (3, 5)]
    graph = trace_channels(model, xs[0])
    residual, head = _group_with(graph, "c1"), _group_with(graph, "c3")
    mean = group_scores(model, graph, "mean_activation", calibration=xs)
    apoz = group_scores(model, graph, "apoz", calibration=[(x, torch.zeros(len(x))) for x in xs])

    with torch.no_grad():
        z1 = [model.bn1(model.c1(x)) for x in xs]  # pre-activations of the residual group
        z2 = [model.bn2(model.c2(torch.relu(z))) for z in z1]
        z3 = [  # c3 has no BatchNorm: its own output
            model.c3(torch.relu(b + torch.relu(a))) for a, b in zip(z1, z2, strict=True)
        ]
    m1, zero1 = _pooled(z1, 1)
    m2, zero2 = _pooled(z2, 1)
    m3, zero3 = _pooled(z3, 1)
    np.testing.assert_allclose(mean[residual.id], (m1 + m2) / 2, rtol=1e-5)
    np.testing.assert_allclose(apoz[residual.id], 1 - (zero1 + zero2) / 2, rtol=1e-6)
    np.testing.assert_allclose(mean[head.id], m3, rtol=1e-5)
    np.testing.assert_allclose(apoz[head.id], 1 - zero3, rtol=1e-6)
    assert mean.fallback == {} and apoz.fallback == {}
    assert len(np.unique(apoz[residual.id])) == residual.size  # not a degenerate case


def test_activation_of_a_linear_layer_uses_its_last_dimension() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(5, 7, 4, generator=_gen(4))  # (batch, tokens, features)
    graph = trace_channels(model, x)
    (group,) = graph.prunable
    mean = group_scores(model, graph, "mean_activation", calibration=[ExampleInputs((x,))])
    apoz = group_scores(model, graph, "apoz", calibration=[x])
    with torch.no_grad():
        pre = model[0](x)
    np.testing.assert_allclose(mean[group.id], pre.clamp_min(0).mean((0, 1)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(apoz[group.id], (pre > 0).double().mean((0, 1)).numpy(), rtol=1e-6)


# --- random -------------------------------------------------------------------------------------


def test_random_scores_are_reproducible_per_seed() -> None:
    model = ConvNet()
    graph = trace_channels(model, torch.randn(2, 3, 6, 6))
    a = group_scores(model, graph, "random", seed=1)
    b = group_scores(model, graph, "random", seed=1)
    c = group_scores(model, graph, "random", seed=2)
    assert set(a) == {g.id for g in graph.prunable}
    for g in graph.prunable:
        assert a[g.id].shape == (g.size,)
        assert ((a[g.id] >= 0) & (a[g.id] < 1)).all()
        np.testing.assert_array_equal(a[g.id], b[g.id])
        assert not np.array_equal(a[g.id], c[g.id])
    with pytest.raises(CriterionError, match="non-negative integer"):
        group_scores(model, graph, "random", seed=-1)


# --- pruning with the scores --------------------------------------------------------------------


def _kept_channels(model: nn.Sequential, w0: torch.Tensor) -> list[int]:
    """Which rows of the original first-layer weight survived."""
    kept = []
    for row in model[0].weight.detach():
        (match,) = [i for i in range(len(w0)) if torch.equal(w0[i], row)]
        kept.append(match)
    return kept


def test_prune_removes_the_channels_with_the_lowest_taylor_scores() -> None:
    model = _mlp(hidden=8, seed=3)
    batches = _batches((4,), 3)
    x = batches[0][0]
    graph = trace_channels(model, x)
    (group,) = graph.prunable
    scores = group_scores(model, graph, "taylor", calibration=batches)
    expected = sorted(np.argsort(scores[group.id])[4:].tolist())  # the four highest
    by_l1 = sorted(np.argsort(group_scores(model, graph, "l1")[group.id])[4:].tolist())
    assert expected != by_l1  # the scores, not the magnitudes, must decide
    w0, gamma, mu, w3 = (
        t.detach().clone()
        for t in (model[0].weight, model[1].weight, model[1].running_mean, model[3].weight)
    )
    given = dict(scores)

    result = prune(model, x, StructuredPruning(ratio=0.5, importance="taylor"), scores=scores)

    assert _kept_channels(model, w0) == expected
    assert torch.equal(model[1].weight.detach(), gamma[expected])
    assert torch.equal(model[1].running_mean, mu[expected])
    assert torch.equal(model[3].weight.detach(), w3[:, expected])
    assert result.removed_atoms == 4
    assert dict(scores) == given  # the caller's scores were not modified


def test_prune_computes_bn_scale_itself() -> None:
    model = _mlp(hidden=8)
    gamma = torch.tensor([0.1, -3.0, 0.2, 2.0, -0.05, 1.0, 0.3, 4.0])
    with torch.no_grad():
        model[1].weight.copy_(gamma)
    w0 = model[0].weight.detach().clone()
    prune(model, torch.randn(2, 4), ratio=0.5, importance="bn_scale")
    assert _kept_channels(model, w0) == [1, 3, 5, 7]
    assert torch.equal(model[1].weight.detach(), gamma[[1, 3, 5, 7]])


def test_prune_with_a_data_criterion_needs_precomputed_scores() -> None:
    model = _mlp()
    w0 = model[0].weight.detach().clone()
    for criterion in sorted(DATA_CRITERIA):
        with pytest.raises(PruneConfigError, match=r"prunekit\.criteria\.group_scores"):
            prune(model, torch.randn(2, 4), ratio=0.5, importance=criterion)
    assert torch.equal(model[0].weight, w0)  # nothing was removed


def test_prune_refuses_scores_that_do_not_fit_the_graph() -> None:
    model = _mlp()
    x = torch.randn(2, 4)
    graph = trace_channels(model, x)
    (group,) = graph.prunable
    config = StructuredPruning(ratio=0.5, importance="taylor")
    with pytest.raises(PruneConfigError, match="no entry for group"):
        prune(model, x, config, graph=graph, scores={})
    with pytest.raises(PruneConfigError, match="6 finite numbers"):
        prune(model, x, config, graph=graph, scores={group.id: np.ones(5)})
    with pytest.raises(PruneConfigError, match="non-finite"):
        prune(model, x, config, graph=graph, scores={group.id: np.array([1, 2, np.nan, 4, 5, 6])})
    assert model[0].weight.shape == (6, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_criterion_gives_the_same_scores_on_cuda() -> None:
    model = ConvNet()
    batches = _batches((3, 6, 6), 2)
    graph = trace_channels(model, batches[0][0])
    on_cpu = {c: group_scores(model, graph, c, calibration=batches) for c in CRITERIA}
    model.cuda()
    for c in CRITERIA:
        on_gpu = group_scores(model, graph, c, calibration=batches)  # CPU batches: moved
        for gid, values in on_cpu[c].items():
            np.testing.assert_allclose(on_gpu[gid], values, rtol=1e-4, atol=1e-7, err_msg=c)
