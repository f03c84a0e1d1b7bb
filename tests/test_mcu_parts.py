"""Building blocks of the microcontroller path: architecture strings, byte budgets, dead-neuron
removal (an exact transformation: outputs must not change), weight sharing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import DeploymentError
from prunekit.mcu.arch import build_mlp, check_fits_data, parse_arch
from prunekit.mcu.budget import format_bytes, parse_bytes
from prunekit.mcu.sharing import WeightSharing, linear_layers
from prunekit.mcu.shrink import remove_dead_neurons


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1MB", 1048576), ("1 MB", 1048576), ("20KB", 20480), ("1.5kb", 1536), ("17000", 17000),
     ("300B", 300), ("2MiB", 2 * 1048576)],
)  # fmt: skip
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "1GB", "-5KB", "0", "1e3"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(DeploymentError, match="byte budget"):
        parse_bytes(text)


def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (17, 2048, 3 * 1048576)] == ["17 B", "2.0 KB", "3.00 MB"]


def test_parse_and_build_arch() -> None:
    assert parse_arch("784-300-100-10") == [784, 300, 100, 10]
    model = build_mlp([6, 5, 4, 3])
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert model(torch.zeros(2, 6)).shape == (2, 3)


@pytest.mark.parametrize("text", ["784", "784-x-10", "784--10", "784-0-10", "784,300,10"])
def test_parse_arch_rejects(text: str) -> None:
    with pytest.raises(DeploymentError, match="architecture"):
        parse_arch(text)


def test_arch_must_match_the_data() -> None:
    with pytest.raises(DeploymentError, match="64 features"):
        check_fits_data([784, 10], 64, 10, "digits")
    with pytest.raises(DeploymentError, match="10 classes"):
        check_fits_data([64, 5], 64, 10, "digits")


def _pruned_mlp() -> nn.Sequential:
    model = build_mlp([12, 9, 7, 4], seed=3)
    first, second, third = (m for m in model if isinstance(m, nn.Linear))
    with torch.no_grad():
        first.weight[[1, 4]] = 0  # neurons 1 and 4 of layer 1 are constant relu(bias)
        first.bias[1] = 0.7  # a positive constant must be folded into the next bias
        first.bias[4] = -0.3  # a negative one is cut off by the ReLU
        second.weight[:, 6] = 0  # neuron 6 of layer 1 is never read
        third.weight[:, [0, 2]] = 0  # neurons 0 and 2 of layer 2 are never read
        second.weight[5] = 0  # neuron 5 of layer 2 is constant
    return model


def test_remove_dead_neurons_keeps_outputs_exactly() -> None:
    model = _pruned_mlp().double()
    x = torch.randn(64, 12, dtype=torch.float64)
    before = model(x)
    removed = remove_dead_neurons(model)
    assert removed == 3 + 3
    widths = [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)]
    assert widths == [(12, 6), (6, 4), (4, 4)]
    assert all(m.weight.shape == (m.out_features, m.in_features) for m in linear_layers(model))
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)
    assert remove_dead_neurons(model) == 0  # nothing left to remove


def test_remove_dead_neurons_keeps_one_neuron() -> None:
    model = build_mlp([3, 2, 2])
    with torch.no_grad():
        model[0].weight.zero_()
    x = torch.randn(5, 3)
    before = model(x)
    assert remove_dead_neurons(model) == 0
    torch.testing.assert_close(model(x), before)


def test_weight_sharing_limits_distinct_values_and_keeps_zeros() -> None:
    torch.manual_seed(0)
    model = build_mlp([40, 30, 5])
    with torch.no_grad():
        for linear in linear_layers(model):
            linear.weight.mul_(torch.rand_like(linear.weight) > 0.6)
    zeros = [(linear.weight == 0).clone() for linear in linear_layers(model)]
    sharing = WeightSharing(linear_layers(model), bits=3)
    # training moves the latent weights; the forward pass only ever sees shared values
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 40), torch.randint(0, 5, (64,))
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sharing.project()
        for linear, share in zip(linear_layers(model), sharing.shares, strict=True):
            units = (linear.weight.detach().double() / share.scale)[linear.weight != 0]
            distance = (units[:, None] - share.centroids[None, :]).abs().amin(dim=1)
            assert len(share.centroids) <= 7 and float(distance.max()) < 1e-3
    before = model(x).detach()
    scales = sharing.finalize()
    assert not any(hasattr(linear, "parametrizations") for linear in linear_layers(model))
    torch.testing.assert_close(model(x), before, atol=0.05, rtol=0)  # only rounding moved
    for linear, zero, scale in zip(linear_layers(model), zeros, scales, strict=True):
        units = linear.weight.detach().double() / torch.from_numpy(scale)[:, None]
        assert bool((units[zero] == 0).all()), "pruned weights stay pruned"
        kept = units[~zero]
        assert bool((kept.abs() > 0.5).all()), "a kept weight never rounds to 0"
        torch.testing.assert_close(kept, kept.round(), rtol=0, atol=1e-4)
        assert len(torch.unique(kept.round())) <= 7
        assert float(kept.abs().max()) <= 127 + 1e-4


def test_random_shift_moves_each_image_with_zero_fill() -> None:
    from prunekit.mcu.train import random_shift

    generator = torch.Generator().manual_seed(0)
    images = torch.arange(1, 1 + 5 * 4 * 6, dtype=torch.float32).reshape(5, 24)
    shifted = random_shift(images, (4, 6), 1, torch.Generator().manual_seed(3))
    assert shifted.shape == images.shape
    moves = set()
    for original, moved in zip(images.view(5, 4, 6), shifted.view(5, 4, 6), strict=True):
        padded = nn.functional.pad(original, (1, 1, 1, 1))
        # Exactly one window of the zero-padded image is the shifted one.
        windows = [
            (dy, dx)
            for dy in range(3)
            for dx in range(3)
            if torch.equal(padded[dy : dy + 4, dx : dx + 6], moved)
        ]
        assert len(windows) == 1
        moves.add(windows[0])
    assert len(moves) > 1  # a draw per image, not one per batch
    assert torch.equal(random_shift(images, (4, 6), 0, generator), images)
    with pytest.raises(ValueError, match="flat 2-D images"):
        random_shift(images, (5, 6), 1, generator)
