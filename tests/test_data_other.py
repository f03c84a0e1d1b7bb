"""sklearn digits splits and image-folder datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    digits_arrays,
    image_folder_dataset,
    load_digits_split,
)
from prunekit.errors import DataError

DIGITS_COUNT = 1797
DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def _rows(dataset: torch.utils.data.TensorDataset) -> list[tuple[bytes, int]]:
    """Each sample as hashable (pixel bytes, label), to compare datasets as multisets."""
    images, labels = dataset.tensors
    return [
        (image.numpy().tobytes(), int(label)) for image, label in zip(images, labels, strict=True)
    ]


def test_digits_arrays_shapes_and_range() -> None:
    features, labels = digits_arrays()
    assert features.shape == (DIGITS_COUNT, 64)
    assert features.dtype == np.float32
    assert labels.dtype == np.int64
    assert features.min() == 0.0
    assert features.max() == 1.0
    # load_digits stores integers 0..16, so every scaled pixel is a multiple of 1/16.
    np.testing.assert_array_equal(features * 16, np.round(features * 16))
    assert np.bincount(labels).tolist() == DIGITS_CLASS_COUNTS


def test_digits_split_sizes_shapes_and_dtypes() -> None:
    train = load_digits_split("train")
    test = load_digits_split("test")
    # sklearn rounds the test side up: ceil(0.25 * 1797) = 450.
    assert len(test) == 450
    assert len(train) == DIGITS_COUNT - 450
    image, label = train[0]
    assert image.shape == (1, 8, 8)
    assert image.dtype == torch.float32
    assert label.dtype == torch.int64
    assert float(train.tensors[0].min()) == 0.0
    assert float(train.tensors[0].max()) == 1.0


def test_digits_split_is_disjoint_and_covers_every_sample() -> None:
    features, labels = digits_arrays()
    everything = sorted(
        (row.reshape(1, 8, 8).tobytes(), int(label))
        for row, label in zip(features, labels, strict=True)
    )
    train, test = load_digits_split("train"), load_digits_split("test")
    assert sorted(_rows(train) + _rows(test)) == everything


def test_digits_split_is_deterministic_per_seed() -> None:
    first, again = load_digits_split("test", seed=3), load_digits_split("test", seed=3)
    assert torch.equal(first.tensors[0], again.tensors[0])
    assert torch.equal(first.tensors[1], again.tensors[1])
    other = load_digits_split("test", seed=4)
    assert not torch.equal(first.tensors[0], other.tensors[0])


@pytest.mark.parametrize("test_fraction", [0.25, 0.5, 0.1])
def test_digits_split_is_stratified(test_fraction: float) -> None:
    test = load_digits_split("test", test_fraction=test_fraction)
    per_class = torch.bincount(test.tensors[1], minlength=10).tolist()
    for count, class_total in zip(per_class, DIGITS_CLASS_COUNTS, strict=True):
        assert abs(count - test_fraction * class_total) <= 1


def test_digits_split_bad_arguments() -> None:
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_digits_split("val")
    with pytest.raises(DataError, match="between 0 and 1"):
        load_digits_split("test", test_fraction=1.0)
    with pytest.raises(DataError, match="cannot split the digits"):
        load_digits_split("test", test_fraction=0.001)


def _save_image(path: Path, size: tuple[int, int], color: tuple[int, int, int] | int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if isinstance(color, int) else "RGB"
    Image.new(mode, size, color).save(path)


def test_image_folder_classes_and_transformed_shape(tmp_path: Path) -> None:
    _save_image(tmp_path / "dog" / "b.png", (40, 30), (10, 20, 30))
    _save_image(tmp_path / "dog" / "c.png", (30, 40), (0, 0, 0))
    _save_image(tmp_path / "cat" / "a.png", (20, 20), 128)  # grayscale becomes 3 channels
    dataset = image_folder_dataset(tmp_path, image_size=16, resize_size=20)
    assert dataset.classes == ["cat", "dog"]
    assert [label for _, label in dataset.samples] == [0, 1, 1]
    image, label = dataset[1]
    assert label == 1
    assert image.shape == (3, 16, 16)
    assert image.dtype == torch.float32
    # A solid colour stays solid through resize and crop, so every pixel is normalize(color).
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected = (torch.tensor([10, 20, 30]) / 255 - mean) / std
    torch.testing.assert_close(image, expected[:, None, None].expand(3, 16, 16), atol=1e-5, rtol=0)
    gray, _ = dataset[0]
    expected_gray = (torch.full((3,), 128 / 255) - mean) / std
    torch.testing.assert_close(
        gray, expected_gray[:, None, None].expand(3, 16, 16), atol=1e-5, rtol=0
    )


def test_image_folder_custom_mean_std(tmp_path: Path) -> None:
    _save_image(tmp_path / "only" / "x.png", (8, 8), (255, 0, 51))
    dataset = image_folder_dataset(
        tmp_path, image_size=4, resize_size=4, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    image, label = dataset[0]
    assert label == 0
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([1.0, -1.0, -0.6]), atol=1e-5, rtol=0)


def test_image_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory"):
        image_folder_dataset(tmp_path / "absent")


def test_image_folder_root_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "file.png"
    _save_image(file, (4, 4), 0)
    with pytest.raises(DataError, match="not a directory"):
        image_folder_dataset(file)


def test_image_folder_without_class_directories(tmp_path: Path) -> None:
    _save_image(tmp_path / "loose.png", (4, 4), 0)
    with pytest.raises(
        DataError, match=r"no class sub-directories.*root/<class_name>/<image files>"
    ):
        image_folder_dataset(tmp_path)


def test_image_folder_class_without_images(tmp_path: Path) -> None:
    _save_image(tmp_path / "cat" / "a.png", (4, 4), 0)
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"dog.*root/<class_name>/<image files>") as info:
        image_folder_dataset(tmp_path)
    assert "\n" not in str(info.value)
