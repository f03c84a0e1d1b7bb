"""Data specs: every kind resolves, fit and eval are disjoint and recorded, bad specs fail
with one line naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit.data import write_idx
from prunekit.data.specs import load_data, parse_spec
from prunekit.errors import DataError


def _idx_dir(root: Path, n_train: int = 40, n_test: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 6, 6), dtype=np.uint8)
        )
        write_idx(root / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 3).astype(np.uint8))
    return root


def _image_folder(root: Path, per_class: int = 5) -> Path:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            shade = 40 * i + (100 if c == "dog" else 0)
            Image.new("RGB", (20, 16), (shade % 256, 0, 0)).save(root / c / f"{i}.png")
    return root


def _segmentation_folder(root: Path, n: int = 6) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.new("RGB", (12, 12), (i * 30, 0, 0)).save(root / "images" / f"s{i}.jpg")
        mask = np.zeros((12, 12), np.uint8)
        mask[:6] = 1
        mask[0, 0] = 255
        Image.fromarray(mask, mode="L").save(root / "masks" / f"s{i}.png")
    return root


def _identity(item: torch.Tensor) -> bytes:
    return item.numpy().tobytes()


def test_idx_directory_keeps_its_own_split(tmp_path: Path) -> None:
    data = load_data(str(_idx_dir(tmp_path)))
    assert data.kind == "idx" and data.task == "classification"
    assert (len(data.fit), len(data.eval)) == (40, 10)
    assert data.split.to_dict()["eval"] == 10
    x, _y = data.fit[0]
    assert x.shape == (1, 6, 6) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert data.num_classes == 3


def test_image_folder_split_is_seeded_disjoint_and_complete(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs")
    a = load_data(str(root), seed=3, image_size=8)
    b = load_data(str(root), seed=3, image_size=8)
    c = load_data(str(root), seed=4, image_size=8)
    assert a.split.fit + a.split.eval == 10 and a.split.eval == 2
    assert a.eval.indices == b.eval.indices  # seeded: the same split every time
    assert a.eval.indices != c.eval.indices or a.fit.indices != c.fit.indices
    assert not set(a.fit.indices) & set(a.eval.indices)
    assert sorted(a.fit.indices + a.eval.indices) == list(range(10))
    assert a.fit[0][0].shape == (3, 8, 8)
    assert "20%" in a.split.eval_from


def test_image_folder_with_train_and_val_uses_them(tmp_path: Path) -> None:
    _image_folder(tmp_path / "ds" / "train", 4)
    _image_folder(tmp_path / "ds" / "val", 2)
    data = load_data(str(tmp_path / "ds"), image_size=8)
    assert (len(data.fit), len(data.eval)) == (8, 4)
    assert data.split.eval_from.endswith("val")


def test_segmentation_folder_pairs_images_with_masks(tmp_path: Path) -> None:
    data = load_data(str(_segmentation_folder(tmp_path / "seg")), image_size=12)
    assert data.kind == "segmentation" and data.task == "segmentation"
    x, mask = data.eval[0]
    assert x.shape == (3, 12, 12) and mask.dtype == torch.int64
    assert int(mask[0, 0]) == 255 and int(mask[1, 0]) == 1 and int(mask[11, 0]) == 0


def test_segmentation_folder_missing_mask_is_named(tmp_path: Path) -> None:
    root = _segmentation_folder(tmp_path / "seg")
    (root / "masks" / "s2.png").unlink()
    with pytest.raises(DataError, match=r"no mask for s2.jpg"):
        load_data(str(root))


def test_sentences_split_disjoint(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("\n".join(f"sentence number {i}" for i in range(50)))
    data = load_data(str(path), seed=1)
    assert data.task == "embedding"
    assert len(data.fit) == 40 and len(data.eval) == 10
    assert not set(data.fit) & set(data.eval)


def test_digits_and_prefixes(tmp_path: Path) -> None:
    data = load_data("digits")
    assert (data.split.fit, data.split.eval) == (1347, 450)
    fit = {_identity(x) for x, _ in data.fit}
    assert not any(_identity(x) in fit for x, _ in data.eval)  # no image in both parts
    (tmp_path / "d").mkdir()
    root = _idx_dir(tmp_path / "d")
    assert parse_spec(f"idx:{root}") == ("idx", str(root))


def test_reshaped_for_a_flat_model_and_impossible_shapes() -> None:
    data = load_data("digits").shaped_for((64,))
    assert data.fit[0][0].shape == (64,)
    with pytest.raises(
        DataError, match=r"inputs are \[1, 8, 8\] but the model takes \[3, 28, 28\]"
    ):
        load_data("digits").shaped_for((3, 28, 28))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-such-dataset", "no such file or directory, and not a built-in dataset"),
        ("", "needs a data spec"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_data(spec)


def test_an_empty_class_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="image folder"):
        load_data(str(tmp_path / "imgs"))
