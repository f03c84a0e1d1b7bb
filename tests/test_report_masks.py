"""Mask pictures and sparsity facts of the report (``prunekit.report.masks``), and the
``weights.safetensors`` that ``prunekit mcu`` writes for them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from torch import nn

from prunekit.report.masks import (
    figure_png,
    layer_sparsity,
    mask_image,
    mask_overlay,
    mcu_mask_overlay,
    sparsity_of_arrays,
)
from prunekit.sparsity import MaskSet, magnitude_masks, nm_mask

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _keep_first_quarter(weight: torch.Tensor) -> torch.Tensor:
    """True where each output row keeps its first quarter of flattened inputs: exactly 75%
    zeros, four kept weights in a row (no N:M pattern)."""
    rows = weight.reshape(weight.shape[0], -1)
    keep = torch.zeros_like(rows, dtype=torch.bool)
    keep[:, : rows.shape[1] // 4] = True
    return keep.reshape(weight.shape)


def _keep_random_quarter(weight: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Exactly a quarter of the weights kept, at random places."""
    order = torch.randperm(weight.numel(), generator=torch.Generator().manual_seed(seed))
    keep = torch.zeros(weight.numel(), dtype=torch.bool)
    keep[order[: weight.numel() // 4]] = True
    return keep.reshape(weight.shape)


def _masked(layer: nn.Module, keep: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        layer.weight.mul_(keep)  # type: ignore[operator]
    return layer


def _by_name(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in layer_sparsity(model)}


def _array(ax: Any, index: int = 0) -> np.ndarray:
    return np.asarray(ax.images[index].get_array())


def _suptitle(fig: Any) -> str:
    return str(fig._suptitle.get_text())  # Figure.get_suptitle needs matplotlib 3.8


def _axes(fig: Any, prefix: str) -> list[Any]:
    return [ax for ax in fig.axes if ax.get_label().startswith(prefix)]


def test_density_and_pattern_of_known_masks() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    conv = nn.Conv2d(8, 4, 3)
    _masked(linear, _keep_first_quarter(linear.weight))
    _masked(conv, _keep_random_quarter(conv.weight))
    nm_linear = nn.Linear(16, 8)
    _masked(nm_linear, nm_mask(nm_linear.weight, 2, 4, dim=1))
    nm_conv = nn.Conv2d(8, 4, 3)  # the repo's N:M for conv: along the input channels (dim 1)
    _masked(nm_conv, nm_mask(nm_conv.weight, 2, 4, dim=1))
    one_of_eight = nn.Linear(16, 8)
    _masked(one_of_eight, nm_mask(one_of_eight.weight, 1, 8, dim=1))
    almost_dense = nn.Linear(200, 1)  # one zero of 200: under 1%
    with torch.no_grad():
        almost_dense.weight[0, 7] = 0
    model = nn.Sequential(
        linear, conv, nm_linear, nm_conv, one_of_eight, nn.Linear(4, 4), almost_dense
    )
    facts = _by_name(model)

    assert facts["0"] == {
        "name": "0", "shape": [8, 16], "density": 0.25, "zeros": 96, "params": 128,
        "pattern": "unstructured",
    }  # fmt: skip
    assert facts["1"]["density"] == 0.25 and facts["1"]["pattern"] == "unstructured"
    assert facts["1"]["shape"] == [4, 8, 3, 3] and facts["1"]["zeros"] == 216
    assert (facts["2"]["pattern"], facts["2"]["density"]) == ("2:4", 0.5)
    assert (facts["3"]["pattern"], facts["3"]["density"]) == ("2:4", 0.5)
    assert (facts["4"]["pattern"], facts["4"]["density"]) == ("1:8", 0.125)
    assert (facts["5"]["pattern"], facts["5"]["density"], facts["5"]["zeros"]) == ("dense", 1.0, 0)
    assert facts["6"]["pattern"] == "dense" and facts["6"]["zeros"] == 1

    # only the layers at least 60% sparse
    assert [f["name"] for f in layer_sparsity(model, min_sparsity=0.6)] == ["0", "1", "4"]
    with pytest.raises(ValueError, match="min_sparsity"):
        layer_sparsity(model, min_sparsity=1.5)


def test_unstructured_that_fits_n_m_by_chance_is_unstructured() -> None:
    torch.manual_seed(0)
    # 95% unstructured: at this density most groups of 8 hold at most 4 kept weights, yet it
    # is no 4:8 pruning
    big = nn.Linear(256, 512)
    _masked(big, magnitude_masks({"w": big.weight}, 0.95)["w"])
    # 2:4, then pruned further without structure (GradualPruner with nm=...): still 2:4
    nm_then_more = nn.Linear(64, 64)
    keep = nm_mask(nm_then_more.weight, 2, 4, dim=1)
    keep &= magnitude_masks({"w": nm_then_more.weight}, 0.7)["w"]
    _masked(nm_then_more, keep)
    facts = _by_name(nn.Sequential(big, nm_then_more))
    assert facts["0"]["pattern"] == "unstructured"
    assert facts["0"]["density"] == pytest.approx(0.05, abs=1e-4)
    assert facts["1"]["pattern"] == "2:4" and facts["1"]["density"] < 0.35


def test_sparsity_of_raw_arrays() -> None:
    rng = np.random.default_rng(0)
    first = rng.integers(1, 128, (6, 12)).astype(np.int8)
    first[:, 3:] = 0  # 54 of 72 zeros, three kept in a row: no N:M
    weights = {
        "layers.10.weight": np.ones((2, 4), np.float32),
        "layers.2.weight": first,
        "layers.2.weight_scale": np.ones(6, np.float32),  # 1-D: skipped
        "layers.3.weight": np.tile(np.array([0, 0, 5, -3, 0, 0, 0, 0], np.int8), (4, 2)),
        "sample.input": np.zeros(12, np.float32),
    }
    facts = sparsity_of_arrays(weights)
    assert [f["name"] for f in facts] == ["layers.2", "layers.3", "layers.10"]  # natural order
    assert facts[0] == {
        "name": "layers.2", "shape": [6, 12], "density": 0.25, "zeros": 54, "params": 72,
        "pattern": "unstructured",
    }  # fmt: skip
    assert (facts[1]["pattern"], facts[1]["density"]) == ("2:8", 0.25)
    assert facts[2]["pattern"] == "dense"


def test_mask_image_shows_the_mask() -> None:
    torch.manual_seed(0)
    linear = _masked(nn.Linear(16, 8), _keep_first_quarter(torch.empty(8, 16)))
    fig = mask_image(linear.weight, "fc")
    assert np.array_equal(_array(fig.axes[0]), (linear.weight != 0).float().numpy())
    assert "density 25.0%" in _suptitle(fig)
    assert len([ax for ax in fig.axes if ax.images]) == 1  # no kernel panel for a Linear

    conv = nn.Conv2d(3, 4, 3)
    keep = torch.ones_like(conv.weight, dtype=torch.bool)
    keep[1] = False  # output channel 1 cut
    keep[:, 2, :, 1:] = False  # input channel 2: 3 of 9 weights kept per kernel
    _masked(conv, keep)
    fig = mask_image(conv.weight, "conv")
    assert np.array_equal(_array(fig.axes[0]), keep.reshape(4, -1).float().numpy())
    per_kernel = _array(fig.axes[1])
    assert per_kernel.shape == (4, 3)
    assert np.allclose(per_kernel[1], 0) and np.allclose(per_kernel[[0, 2, 3], 2], 1 / 3)
    assert np.allclose(per_kernel[[0, 2, 3]][:, :2], 1)
    assert "density" in _suptitle(fig)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        mask_image(torch.ones(5), "bias")


def test_mask_image_of_a_huge_layer_shows_block_fractions() -> None:
    wide = np.zeros((3, 4100), np.int8)  # over 2048 columns: blocks of 1x3
    wide[0, ::3] = 1  # row 0: one of every 3 kept
    wide[2] = 1
    fig = mask_image(wide, "wide")
    picture = _array(fig.axes[0])
    assert picture.shape == (3, 1367)  # ceil(4100 / 3)
    assert np.allclose(picture[0, :-1], 1 / 3) and np.allclose(picture[1], 0)
    assert np.allclose(picture[2], 1)  # the last, shorter block too
    assert fig.axes[0].images[0].get_extent() == [-0.5, 4099.5, 2.5, -0.5]  # real indices
    assert any("1×3" in t.get_text() for t in fig.axes[0].texts)


@pytest.fixture
def conv_pair() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    sparse = copy.deepcopy(dense)
    MaskSet(sparse, magnitude_masks({"2.weight": sparse[2].weight}, 0.9, scope="layer")).apply()
    return dense, sparse, torch.randn(1, 3, 12, 12)


def test_mask_overlay_conv_shows_inputs_outputs_and_their_difference(conv_pair) -> None:  # type: ignore[no-untyped-def]
    dense, sparse, x = conv_pair
    sparse.train()
    fig = mask_overlay(dense, sparse, "2", x)
    assert sparse.training and all(m.training for m in sparse.modules()), "modes restored"
    with torch.no_grad():
        reads = torch.relu(sparse[0](x))[0]
        dense_out, sparse_out = dense(x)[0], sparse(x)[0]
    keep = sparse[2].weight != 0
    out_kept = keep.float().mean(dim=(1, 2, 3)).numpy()
    in_kept = keep.float().mean(dim=(0, 2, 3)).numpy()

    diffs = _axes(fig, "diff:")
    order = [int(ax.get_label().split(":")[1]) for ax in diffs]
    assert sorted(order) == list(range(8))
    assert order == list(np.argsort(out_kept, kind="stable")), "the most pruned channels first"
    assert list(out_kept[order]) == sorted(out_kept)
    for ax, channel in zip(diffs, order, strict=True):
        expected = (dense_out[channel] - sparse_out[channel]).abs().numpy()
        assert np.allclose(_array(ax), expected, atol=1e-6)
    assert any(_array(ax).max() > 0 for ax in diffs)
    for ax in _axes(fig, "dense:"):
        assert np.allclose(_array(ax), dense_out[int(ax.get_label()[6:])].numpy(), atol=1e-6)
    for ax in _axes(fig, "sparse:"):
        assert np.allclose(_array(ax), sparse_out[int(ax.get_label()[7:])].numpy(), atol=1e-6)
    inputs = _axes(fig, "input:")
    in_order = [int(ax.get_label()[6:]) for ax in inputs]
    assert list(in_kept[in_order]) == sorted(in_kept)
    for ax, channel in zip(inputs, in_order, strict=True):
        assert np.allclose(_array(ax), reads[channel].numpy(), atol=1e-6)
        (label,) = [t.get_text() for t in ax.texts]  # the kept fraction written on the map
        assert label.startswith("kept ") and label.endswith("%")
        assert float(label[5:-1]) / 100 == pytest.approx(in_kept[channel], abs=0.005)
    # dense and sparse outputs share one colour scale
    limits = {ax.images[0].get_clim() for ax in _axes(fig, "dense:") + _axes(fig, "sparse:")}
    assert len(limits) == 1
    assert "2 (Conv2d)" in _suptitle(fig)

    few = mask_overlay(dense, sparse, "2", x, max_maps=3)
    assert [ax.get_label() for ax in _axes(few, "diff:")] == [f"diff:{c}" for c in order[:3]]
    same = mask_overlay(dense, dense, "2", x)
    assert all(np.array_equal(_array(ax), np.zeros_like(_array(ax))) for ax in _axes(same, "diff:"))


def test_mask_overlay_rejects_unknown_layers(conv_pair) -> None:  # type: ignore[no-untyped-def]
    dense, sparse, x = conv_pair
    with pytest.raises(ValueError, match=r"'1' is not a Conv or Linear.*valid names: '0', '2'"):
        mask_overlay(dense, sparse, "1", x)
    with pytest.raises(ValueError, match="not a Conv or Linear"):
        mask_overlay(dense, sparse, "fc", x)
    shrunk = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    with pytest.raises(ValueError, match="same-shaped"):
        mask_overlay(dense, shrunk, "2", x)


def test_mask_overlay_linear_draws_a_square_input_as_an_image() -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    sparse = copy.deepcopy(dense)
    keep = magnitude_masks({"w": sparse[0].weight}, 0.9)["w"]
    keep[:, 5] = False  # pixel 5 is read by no neuron
    _masked(sparse[0], keep)
    x = torch.rand(1, 64)
    fig = mask_overlay(dense, sparse, "0", x)
    panels = {ax.get_label(): ax for ax in fig.axes if ax.get_label()}
    assert np.allclose(_array(panels["input"]), x[0].reshape(8, 8).numpy())
    assert np.allclose(_array(panels["input_kept"]), keep.float().mean(0).reshape(8, 8).numpy())
    with torch.no_grad():
        expected = (dense[0](x) - sparse[0](x))[0].abs().numpy()
    assert _array(panels["diff"]).shape == (1, 32)  # 32 is no square: a strip
    assert np.allclose(_array(panels["diff"])[0], expected, atol=1e-6)
    crosses = panels["input"].collections[0].get_offsets()
    assert [5 % 8, 5 // 8] in np.asarray(crosses).tolist()


def test_figure_png_is_png_and_releases_the_figure() -> None:
    fig = mask_image(np.eye(4), "eye")
    data = figure_png(fig, dpi=40)
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert fig.axes == []


def test_mcu_deployment_writes_the_weights_a_report_overlays(tmp_path: Path) -> None:
    from prunekit.mcu.compress import Recipe, compress_to_budget, train_dense
    from prunekit.mcu.datasets import load_splits
    from prunekit.mcu.deploy import dense_facts, write_deployment

    torch.manual_seed(0)
    data = load_splits("digits")
    recipe = Recipe(dense_epochs=2, prune_epochs=3, finetune_epochs=1, sharing_epochs=1,
                    batch_size=64, patience=1)  # fmt: skip
    dense = train_dense([64, 24, 10], data, recipe)
    compression = compress_to_budget(dense, data, 1200, recipe, value_bits=(8,))
    out = tmp_path / "mcu"
    report = write_deployment(out, compression, dense_facts(dense, [64, 24, 10], 0.5), data, "1200")

    assert "weights.safetensors" in report["files"]
    assert json.loads((out / "report.json").read_text())["files"] == report["files"]
    weights = load_file(str(out / "weights.safetensors"))
    layers = compression.best.qmodel.layers
    assert sorted(weights) == sorted(
        [f"layers.{i}.{k}" for i in range(len(layers)) for k in ("weight", "weight_scale")]
        + ["sample.input", "sample.label"]
    )
    for i, layer in enumerate(layers):
        assert weights[f"layers.{i}.weight"].dtype == np.int8
        assert np.array_equal(weights[f"layers.{i}.weight"], layer.weight)
        assert weights[f"layers.{i}.weight_scale"].dtype == np.float32
        assert np.array_equal(weights[f"layers.{i}.weight_scale"], layer.weight_scale)
    nonzeros = sum(int(np.count_nonzero(weights[f"layers.{i}.weight"])) for i in range(len(layers)))
    assert nonzeros == report["compressed"]["nonzeros"]
    assert np.array_equal(weights["sample.input"], data.test_x[0].numpy())
    assert weights["sample.label"].dtype == np.int64
    assert weights["sample.label"].tolist() == [int(data.test_y[0])]

    facts = sparsity_of_arrays(weights)
    assert [f["name"] for f in facts] == [f"layers.{i}" for i in range(len(layers))]
    assert sum(f["params"] - f["zeros"] for f in facts) == nonzeros

    fig = mcu_mask_overlay(weights, weights["sample.input"])
    panels = {ax.get_label(): ax for ax in fig.axes if ax.get_label()}
    first = weights["layers.0.weight"] != 0
    assert np.array_equal(_array(panels["input"]), weights["sample.input"].reshape(8, 8))
    assert np.array_equal(_array(panels["readers"], 1), first.sum(0).reshape(8, 8))
    for i in range(len(layers)):
        assert np.array_equal(_array(panels[f"mask:{i}"]), weights[f"layers.{i}.weight"] != 0)
    assert f"(label {int(data.test_y[0])})" in _suptitle(fig)
    with pytest.raises(ValueError, match="the first layer reads 64"):
        mcu_mask_overlay(weights, np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="layers"):
        mcu_mask_overlay({"sample.input": weights["sample.input"]}, weights["sample.input"])
