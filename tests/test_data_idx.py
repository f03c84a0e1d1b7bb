"""IDX reading/writing, MNIST-style folder discovery and the real Fashion-MNIST files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DEBIAN_DIR,
    IdxDataset,
    find_idx_files,
    load_idx_split,
    read_idx,
    write_idx,
)
from prunekit.errors import DataError

# Hand-written IDX file: ubyte (0x08), 2 dims (2, 3), then 6 values.
GOLDEN_UBYTE = (
    b"\x00\x00\x08\x02" + b"\x00\x00\x00\x02\x00\x00\x00\x03" + bytes([0, 1, 2, 253, 254, 255])
)
GOLDEN_UBYTE_ARRAY = np.array([[0, 1, 2], [253, 254, 255]], dtype=np.uint8)
# Hand-written IDX file: short (0x0B), 1 dim (2), values 258 and -2 big-endian.
GOLDEN_SHORT = b"\x00\x00\x0b\x01\x00\x00\x00\x02" + b"\x01\x02\xff\xfe"

IMAGE_NAMES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABEL_NAMES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}


def test_read_idx_decodes_hand_written_ubyte_file(tmp_path: Path) -> None:
    path = tmp_path / "golden-idx2-ubyte"
    path.write_bytes(GOLDEN_UBYTE)
    result = read_idx(path)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, GOLDEN_UBYTE_ARRAY)


def test_read_idx_decodes_big_endian_shorts_to_native(tmp_path: Path) -> None:
    path = tmp_path / "golden-short"
    path.write_bytes(GOLDEN_SHORT)
    result = read_idx(path)
    assert result.dtype == np.dtype(np.int16)
    assert result.dtype.isnative
    assert result.tolist() == [258, -2]


def test_write_idx_produces_the_hand_written_bytes(tmp_path: Path) -> None:
    path = tmp_path / "out"
    write_idx(path, GOLDEN_UBYTE_ARRAY)
    assert path.read_bytes() == GOLDEN_UBYTE
    write_idx(path, np.array([258, -2], dtype=np.int16))
    assert path.read_bytes() == GOLDEN_SHORT


def test_gzip_is_detected_by_magic_bytes_not_extension(tmp_path: Path) -> None:
    gz_without_suffix = tmp_path / "looks-raw"
    gz_without_suffix.write_bytes(gzip.compress(GOLDEN_UBYTE))
    np.testing.assert_array_equal(read_idx(gz_without_suffix), GOLDEN_UBYTE_ARRAY)
    raw_with_suffix = tmp_path / "looks-gzipped.gz"
    raw_with_suffix.write_bytes(GOLDEN_UBYTE)
    np.testing.assert_array_equal(read_idx(raw_with_suffix), GOLDEN_UBYTE_ARRAY)


def test_write_idx_gzips_when_path_ends_in_gz(tmp_path: Path) -> None:
    path = tmp_path / "out.gz"
    write_idx(path, GOLDEN_UBYTE_ARRAY)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(path.read_bytes()) == GOLDEN_UBYTE


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 5), (2, 1, 3, 2), (0, 28, 28)])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_read_round_trip(
    tmp_path: Path, dtype: type, shape: tuple[int, ...], suffix: str
) -> None:
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        array = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        array = rng.standard_normal(shape).astype(dtype) * 1e3
    path = tmp_path / f"array{suffix}"
    write_idx(path, array)
    result = read_idx(path)
    assert result.dtype == np.dtype(dtype)
    assert result.shape == shape
    np.testing.assert_array_equal(result, array)
    assert result.flags.writeable


def test_write_idx_accepts_tensors(tmp_path: Path) -> None:
    path = tmp_path / "tensor"
    write_idx(path, torch.tensor([[1.5, -2.0]], dtype=torch.float32))
    np.testing.assert_array_equal(read_idx(path), np.array([[1.5, -2.0]], dtype=np.float32))


def test_write_idx_rejects_unsupported_dtype_without_creating_file(tmp_path: Path) -> None:
    path = tmp_path / "int64-array"
    with pytest.raises(DataError, match="int64"):
        write_idx(path, np.arange(3, dtype=np.int64))
    assert not path.exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x01\x00" + GOLDEN_UBYTE[2:], "bad magic"),
        (b"\x00\x00\x07" + GOLDEN_UBYTE[3:], "unknown dtype code 0x07"),
        (GOLDEN_UBYTE[:-1], "truncated data"),
        (GOLDEN_UBYTE + b"\x00", "does not match the dims"),
        (GOLDEN_UBYTE[:6], "truncated header"),
        (b"\x00\x00", "truncated header"),
    ],
)
@pytest.mark.parametrize("gzipped", [False, True])
def test_corrupt_files_raise_data_error_naming_the_file(
    tmp_path: Path, content: bytes, problem: str, gzipped: bool
) -> None:
    path = tmp_path / "corrupt-idx3-ubyte"
    path.write_bytes(gzip.compress(content) if gzipped else content)
    with pytest.raises(DataError, match=problem) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_raises_data_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(GOLDEN_UBYTE * 50)[:20])
    with pytest.raises(DataError, match="corrupt or truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "absent")


def _write_split(
    directory: Path, split: str, n: int, *, suffix: str = "", dot: bool = False
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    image_name, label_name = IMAGE_NAMES[split], LABEL_NAMES[split]
    if dot:
        image_name = image_name.replace("-idx", ".idx")
        label_name = label_name.replace("-idx", ".idx")
    images = (np.arange(n * 4 * 3) % 256).astype(np.uint8).reshape(n, 4, 3)
    write_idx(directory / (image_name + suffix), images)
    write_idx(directory / (label_name + suffix), (np.arange(n) % 10).astype(np.uint8))


@pytest.mark.parametrize("layout", [".", "MNIST/raw", "FashionMNIST/raw", "KMNIST/raw", "raw"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_find_idx_files_in_each_layout(tmp_path: Path, layout: str, split: str) -> None:
    directory = tmp_path / layout
    _write_split(directory, split, 3)
    images, labels = find_idx_files(tmp_path, split)
    assert images == directory / IMAGE_NAMES[split]
    assert labels == directory / LABEL_NAMES[split]


def test_find_idx_files_accepts_gz_and_dot_variant(tmp_path: Path) -> None:
    _write_split(tmp_path / "gz", "train", 3, suffix=".gz")
    assert find_idx_files(tmp_path / "gz", "train") == (
        tmp_path / "gz" / "train-images-idx3-ubyte.gz",
        tmp_path / "gz" / "train-labels-idx1-ubyte.gz",
    )
    _write_split(tmp_path / "dot", "test", 3, dot=True)
    assert find_idx_files(tmp_path / "dot", "test") == (
        tmp_path / "dot" / "t10k-images.idx3-ubyte",
        tmp_path / "dot" / "t10k-labels.idx1-ubyte",
    )


def test_find_idx_files_prefers_raw_over_gz_in_torchvision_folder(tmp_path: Path) -> None:
    # torchvision keeps both the download and its decompressed copy in MNIST/raw.
    directory = tmp_path / "MNIST" / "raw"
    _write_split(directory, "train", 3, suffix=".gz")
    _write_split(directory, "train", 3)
    assert find_idx_files(tmp_path, "train")[0] == directory / "train-images-idx3-ubyte"


def test_find_idx_files_names_missing_files_and_searched_dirs(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((1, 2, 2), dtype=np.uint8))
    with pytest.raises(DataError) as info:
        find_idx_files(tmp_path, "train")
    message = str(info.value)
    assert "missing train-labels-idx1-ubyte" in message
    assert "train-images-idx3-ubyte" not in message.split("searched")[0].split("missing")[1]
    for searched in ("MNIST/raw", "FashionMNIST/raw", "KMNIST/raw", f"{tmp_path}/raw"):
        assert searched in message
    with pytest.raises(
        DataError, match="missing t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte"
    ):
        find_idx_files(tmp_path, "test")


def test_find_idx_files_refuses_images_and_labels_from_different_folders(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((1, 2, 2), dtype=np.uint8))
    (tmp_path / "raw").mkdir()
    write_idx(tmp_path / "raw" / "train-labels-idx1-ubyte", np.zeros(1, dtype=np.uint8))
    with pytest.raises(DataError, match="same directory"):
        find_idx_files(tmp_path, "train")


def test_find_idx_files_bad_split_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown split 'validation'"):
        find_idx_files(tmp_path, "validation")
    with pytest.raises(DataError, match="no such directory"):
        find_idx_files(tmp_path / "nowhere", "train")


def test_load_idx_split_returns_uint8_images_and_int64_labels(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", 5)
    images, labels = load_idx_split(tmp_path, "train")
    assert images.dtype == torch.uint8
    assert images.shape == (5, 4, 3)
    assert labels.dtype == torch.int64
    assert labels.tolist() == [0, 1, 2, 3, 4]
    assert images[1, 0].tolist() == [12, 13, 14]


def test_load_idx_split_rejects_count_mismatch(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 2, 2), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match="5 images in train-images-idx3-ubyte but 4 labels"):
        load_idx_split(tmp_path, "train")


def test_load_idx_split_rejects_images_that_are_not_3d_uint8(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 4), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match=r"expected uint8 images of shape \[N, H, W\]"):
        load_idx_split(tmp_path, "train")


def test_idx_dataset_items_are_scaled_float_images_and_int_labels(tmp_path: Path) -> None:
    directory = tmp_path / "FashionMNIST" / "raw"
    directory.mkdir(parents=True)
    images = np.array([[[0, 255], [51, 102]], [[255, 0], [0, 0]]], dtype=np.uint8)
    write_idx(directory / "t10k-images-idx3-ubyte.gz", images)
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.array([7, 3], dtype=np.uint8))
    dataset = IdxDataset(tmp_path, split="test")
    assert len(dataset) == 2
    image, label = dataset[0]
    assert isinstance(image, torch.Tensor)
    assert image.dtype == torch.float32
    assert image.shape == (1, 2, 2)
    torch.testing.assert_close(image, torch.tensor([[[0.0, 1.0], [0.2, 0.4]]]))
    assert label == 7
    assert isinstance(label, int)
    assert dataset[-1][1] == 3


def test_idx_dataset_applies_transform_to_the_float_image(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", 2)
    dataset = IdxDataset(tmp_path, transform=lambda image: (image.shape, image.dtype, image.max()))
    (shape, dtype, maximum), label = dataset[1]
    assert shape == (1, 4, 3)
    assert dtype == torch.float32
    assert maximum == pytest.approx(23 / 255)
    assert label == 1


@pytest.mark.skipif(
    not FASHION_MNIST_DEBIAN_DIR.is_dir(),
    reason=f"Fashion-MNIST not installed in {FASHION_MNIST_DEBIAN_DIR} "
    "(apt install dataset-fashion-mnist)",
)
@pytest.mark.parametrize(
    ("split", "count", "first_labels"),
    [("train", 60000, [9, 0, 0, 3, 0]), ("test", 10000, [9, 2, 1, 1, 6])],
)
def test_real_fashion_mnist(split: str, count: int, first_labels: list[int]) -> None:
    images, labels = load_idx_split(FASHION_MNIST_DEBIAN_DIR, split)
    assert labels[:5].tolist() == first_labels
    assert images.shape == (count, 28, 28)
    assert images.dtype == torch.uint8
    assert labels.shape == (count,)
    assert torch.bincount(labels, minlength=10).tolist() == [count // 10] * 10
    assert len(FASHION_MNIST_CLASSES) == 10
    assert int(images.max()) == 255
    assert int(images.min()) == 0
