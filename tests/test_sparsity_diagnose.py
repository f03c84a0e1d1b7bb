"""Diagnosis pictures (prunekit.sparsity.diagnose): the files, the layer rule, the changed pixels."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.nn import unet
from prunekit.sparsity import magnitude_masks
from prunekit.sparsity.allocation import target_weights
from prunekit.sparsity.diagnose import (
    changed_pixels,
    channel_kept,
    choose_layer,
    load_image,
    mask_disagreement,
    predicted_classes,
    write_diagnosis,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _sparse(model: nn.Module, sparsity: float | dict[str, float]) -> nn.Module:
    """A copy of ``model`` with its conv weights zeroed by global (or per-layer) magnitude."""
    copied = copy.deepcopy(model)
    weights = target_weights(copied)
    scope = "layer" if isinstance(sparsity, dict) else "global"
    masks = magnitude_masks({n: w.detach() for n, w in weights.items()}, sparsity, scope)
    with torch.no_grad():
        for name, weight in weights.items():
            weight.mul_(masks[name])
    return copied.eval()


@pytest.fixture(scope="module")
def models() -> tuple[nn.Module, dict[str, nn.Module], torch.Tensor]:
    torch.manual_seed(0)
    dense = unet(width=4, depth=2).eval()
    with torch.no_grad():  # BatchNorm statistics that make the layers matter
        for module in dense.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.fill_(0.05)
    variants = {"one-shot 95%": _sparse(dense, 0.95), "gradual 70%": _sparse(dense, 0.7)}
    return dense, variants, torch.rand(3, 32, 32)


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.float32)


def test_writes_valid_non_blank_pngs(
    models: tuple[nn.Module, dict[str, nn.Module], torch.Tensor], tmp_path: Path
) -> None:
    dense, variants, image = models
    training = {name: m.training for name, m in dense.named_modules()}
    paths = write_diagnosis(dense, variants, image, tmp_path / "out")
    assert [p.name for p in paths] == [
        "mask-one-shot-95.png", "mask-gradual-70.png", "features.png",
        "boundary-one-shot-95.png", "boundary-gradual-70.png",
    ]  # fmt: skip
    for path in paths:
        assert path.parent == tmp_path / "out"
        assert path.read_bytes()[:8] == PNG
        pixels = _pixels(path)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200
        assert pixels.var() > 0
    assert {name: m.training for name, m in dense.named_modules()} == training


def test_a_named_layer_and_a_batched_image(
    models: tuple[nn.Module, dict[str, nn.Module], torch.Tensor], tmp_path: Path
) -> None:
    dense, variants, image = models
    one = {"v": variants["one-shot 95%"]}
    paths = write_diagnosis(dense, one, image.unsqueeze(0), tmp_path, layer="enc.0.0.weight")
    assert [p.name for p in paths] == ["mask-v.png", "features.png", "boundary-v.png"]
    with pytest.raises(ValueError, match=r"layer 'enc\.9' .*valid names: enc\.0\.0"):
        write_diagnosis(dense, one, image, tmp_path, layer="enc.9")
    with pytest.raises(ValueError, match="non-empty"):
        write_diagnosis(dense, {}, image, tmp_path)
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        write_diagnosis(dense, one, torch.rand(32, 32), tmp_path)


def test_a_model_without_segmentation_output_gets_masks_and_features_only(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    paths = write_diagnosis(dense, {"s": _sparse(dense, 0.9)}, torch.rand(3, 8, 8), tmp_path)
    assert [p.name for p in paths] == ["mask-s.png", "features.png"]
    # the conv is chosen over the larger, sparser Linear layer
    assert choose_layer(dense, {"s": _sparse(dense, {"0.weight": 0.5, "3.weight": 0.99})}) == "0"


def test_the_layer_rule_picks_the_masks_that_differ_most() -> None:
    torch.manual_seed(0)
    dense = unet(width=4, depth=2)
    names = [n.removesuffix(".weight") for n in target_weights(dense)]
    # two variants equal everywhere except dec.0.3, where one keeps everything, the other 10%
    levels = dict.fromkeys((f"{n}.weight" for n in names), 0.5)
    a = _sparse(dense, levels)
    b = _sparse(dense, {**levels, "dec.0.3.weight": 0.9})
    a_weight = a.get_submodule("dec.0.3").weight
    with torch.no_grad():
        a_weight.copy_(dense.get_submodule("dec.0.3").weight)
    assert choose_layer(dense, {"a": a, "b": b}) == "dec.0.3"
    # with one variant: the layer it pruned most
    assert choose_layer(dense, {"b": b}) == "dec.0.3"
    # masks that all agree: the most-pruned layer of the first variant; ties: the first layer
    assert choose_layer(dense, {"b": b, "b again": copy.deepcopy(b)}) == "dec.0.3"
    assert choose_layer(dense, {"a": a}) == names[0]


def test_mask_disagreement_and_channel_kept_are_direct_counts() -> None:
    a = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    assert mask_disagreement([a, b]) == pytest.approx(3 / 8)
    assert mask_disagreement([a, a, b]) == pytest.approx(3 / 8)
    assert mask_disagreement([a]) == 0.0
    conv = torch.zeros(3, 2, 2, 2)
    conv[0] = 1.0
    conv[1, 0, 0, 0] = -1.0
    assert channel_kept(conv).tolist() == [1.0, 1 / 8, 0.0]
    assert channel_kept(a).tolist() == [0.5, 0.0]


def test_changed_pixels_are_where_the_predicted_class_differs(
    models: tuple[nn.Module, dict[str, nn.Module], torch.Tensor],
) -> None:
    dense, _, image = models
    # a variant that changes about half the pixels: the bias of a class the dense model does
    # not predict everywhere raised by its median margin below the winning logit
    sparse = copy.deepcopy(dense)
    with torch.no_grad():
        logits = dense(image[None])[0]
        medians = (logits.max(0).values - logits).flatten(1).median(1).values
        label = int(torch.where(medians > 0, medians, torch.inf).argmin())
        bias = sparse.get_submodule("head").bias
        assert bias is not None
        bias[label] += medians[label]
    with torch.no_grad():
        expected = dense(image[None]).argmax(1)[0] != sparse(image[None]).argmax(1)[0]
    changed = changed_pixels(dense, sparse, image)
    assert changed.dtype == torch.bool and changed.shape == (32, 32)
    assert torch.equal(changed, expected)
    assert 0 < int(changed.sum()) < changed.numel()  # the test sees both kinds of pixel
    predicted = predicted_classes(dense, image)
    assert predicted is not None and predicted.dtype == torch.int64
    assert not changed_pixels(dense, copy.deepcopy(dense), image).any()
    assert predicted_classes(nn.Flatten(), image) is None
    with pytest.raises(ValueError, match="segmentation logits"):
        changed_pixels(nn.Flatten(), nn.Flatten(), image)


def test_load_image_reads_a_file_into_a_model_input(tmp_path: Path) -> None:
    from PIL import Image

    pixels = np.zeros((6, 10, 3), dtype=np.uint8)
    pixels[:, :5, 0] = 255
    pixels[2, 7] = (10, 20, 30)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(pixels).save(tmp_path / "b.jpg", quality=95)
    x = load_image(tmp_path / "a.png")
    assert x.dtype == torch.float32 and x.shape == (3, 6, 10)
    assert torch.equal(x, torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32) / 255))
    assert load_image(tmp_path / "a.png", 16).shape == (3, 16, 16)
    assert load_image(tmp_path / "b.jpg", (8, 12)).shape == (3, 8, 12)
    assert load_image(tmp_path / "gray.png").shape == (3, 6, 10)
    normalised = load_image(tmp_path / "a.png", mean=[0.5] * 3, std=[0.5] * 3)
    assert torch.allclose(normalised, x * 2 - 1)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    (tmp_path / "not.png").write_text("text")
    with pytest.raises(ValueError, match="not an image"):
        load_image(tmp_path / "not.png")
