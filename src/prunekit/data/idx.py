"""Read and write IDX files, the format of MNIST, Fashion-MNIST and KMNIST.

Layout (http://yann.lecun.com/exdb/mnist/): two zero bytes, one dtype-code byte, one byte with
the number of dimensions, then each dimension as a big-endian uint32, then the values in C order,
big-endian. Files are often distributed gzipped; gzip is recognised by its magic bytes, so a
decompressed file that kept its ``.gz`` name (or the reverse) still reads.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from prunekit.errors import DataError

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the four ``.gz`` files."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Fashion-MNIST class names, indexed by label."""

_GZIP_MAGIC = b"\x1f\x8b"

# IDX dtype code -> big-endian numpy dtype, as listed on the MNIST page.
_DTYPE_BY_CODE: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# (numpy kind, itemsize) -> IDX dtype code; keyed this way so native and big-endian dtypes match.
_CODE_BY_KIND_SIZE = {(dt.kind, dt.itemsize): code for code, dt in _DTYPE_BY_CODE.items()}

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
# Flat files first, then the folders torchvision's MNIST-like datasets download into.
_LAYOUT_SUBDIRS = (".", "MNIST/raw", "FashionMNIST/raw", "KMNIST/raw", "raw")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a native-byte-order, writable numpy array."""
    path = Path(path)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file {path}: no such file") from None
    except OSError as exc:
        raise DataError(f"IDX file {path}: cannot read it ({exc.strerror or exc})") from None
    if content[:2] == _GZIP_MAGIC:
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"IDX file {path}: corrupt or truncated gzip data ({exc}); download it again"
            ) from None
    return _decode_idx(content, path)


def _decode_idx(content: bytes, path: Path) -> np.ndarray:
    if len(content) < 4:
        raise DataError(
            f"IDX file {path}: truncated header ({len(content)} bytes, need at least 4)"
        )
    if content[:2] != b"\x00\x00":
        raise DataError(
            f"IDX file {path}: bad magic bytes 0x{content[:2].hex()} (an IDX file starts with "
            "0x0000); is it really an MNIST-format file?"
        )
    code, ndim = content[2], content[3]
    dtype = _DTYPE_BY_CODE.get(code)
    if dtype is None:
        known = ", ".join(f"0x{c:02X}" for c in _DTYPE_BY_CODE)
        raise DataError(f"IDX file {path}: unknown dtype code 0x{code:02X} (known: {known})")
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DataError(
            f"IDX file {path}: truncated header ({len(content)} bytes, "
            f"{ndim} dimensions need {header_size})"
        )
    dims = tuple(int(d) for d in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims) * dtype.itemsize
    found = len(content) - header_size
    if found < expected:
        raise DataError(
            f"IDX file {path}: truncated data (dims {dims} need {expected} bytes, "
            f"found {found}); download it again"
        )
    if found > expected:
        raise DataError(
            f"IDX file {path}: data size does not match the dims (dims {dims} need "
            f"{expected} bytes, found {found})"
        )
    values = np.frombuffer(content, dtype=dtype, count=math.prod(dims), offset=header_size)
    # astype copies: the result is writable (torch.from_numpy warns otherwise) and native-endian.
    return values.reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray | torch.Tensor) -> None:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``.

    Supported dtypes: uint8, int8, int16, int32, float32, float64. Everything is checked before
    the file is opened, so a bad array never leaves a half-written file behind.
    """
    path = Path(path)
    values = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    code = _CODE_BY_KIND_SIZE.get((values.dtype.kind, values.dtype.itemsize))
    if code is None:
        raise DataError(
            f"cannot write {path}: IDX has no dtype for {values.dtype}; convert the array to "
            "uint8, int8, int16, int32, float32 or float64"
        )
    if any(d > 0xFFFFFFFF for d in values.shape):
        raise DataError(f"cannot write {path}: shape {values.shape} has a dim above 2**32 - 1")
    header = bytes([0, 0, code, values.ndim]) + np.asarray(values.shape, dtype=">u4").tobytes()
    payload = header + values.astype(_DTYPE_BY_CODE[code]).tobytes()
    if path.name.endswith(".gz"):
        # mtime=0 so that writing the same array twice gives byte-identical files.
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


def _candidate_names(split: str, kind: str) -> list[str]:
    """File names accepted for one file of a split, preferred first (raw before gzipped)."""
    prefix = _SPLIT_PREFIX[split]
    ndim = 3 if kind == "images" else 1
    stems = (f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte")
    return [stem + ext for ext in ("", ".gz") for stem in stems]


def _check_split(split: str) -> None:
    if split not in _SPLIT_PREFIX:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")


def find_idx_files(root: str | Path, split: str = "train") -> tuple[Path, Path]:
    """Find the (images, labels) IDX files of ``split`` under ``root``.

    Looks in ``root`` itself, then in torchvision's download folders ``root/MNIST/raw``,
    ``root/FashionMNIST/raw``, ``root/KMNIST/raw`` and ``root/raw``, and returns the files of the
    first folder holding both, so images and labels never come from two different datasets.
    """
    _check_split(split)
    root = Path(root)
    if not root.exists():
        raise DataError(f"IDX dataset root {root}: no such directory")
    if not root.is_dir():
        raise DataError(f"IDX dataset root {root}: not a directory")
    searched = [root / sub if sub != "." else root for sub in _LAYOUT_SUBDIRS]
    found_in: dict[str, list[Path]] = {"images": [], "labels": []}
    for directory in searched:
        images = _first_existing(directory, _candidate_names(split, "images"))
        labels = _first_existing(directory, _candidate_names(split, "labels"))
        if images is not None and labels is not None:
            return images, labels
        for kind, file in (("images", images), ("labels", labels)):
            if file is not None:
                found_in[kind].append(directory)
    searched_text = ", ".join(str(d) for d in searched)
    missing = [_candidate_names(split, kind)[0] for kind in found_in if not found_in[kind]]
    if missing:
        raise DataError(
            f"{split} split not found under {root}: missing {' and '.join(missing)} (also "
            f"accepted: a .gz suffix, '.idx' instead of '-idx'); searched {searched_text}"
        )
    raise DataError(
        f"{split} split under {root}: images are in {found_in['images'][0]} but labels in "
        f"{found_in['labels'][0]}; put both files in the same directory"
    )


def _first_existing(directory: Path, names: list[str]) -> Path | None:
    for name in names:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def load_idx_split(root: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as (uint8 images [N, H, W], int64 labels [N])."""
    images_path, labels_path = find_idx_files(root, split)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"IDX file {images_path}: expected uint8 images of shape [N, H, W], got "
            f"{images.dtype} with shape {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"IDX file {labels_path}: expected integer labels of shape [N], got "
            f"{labels.dtype} with shape {labels.shape}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{split} split under {root}: {len(images)} images in {images_path.name} but "
            f"{len(labels)} labels in {labels_path.name}; the files belong to different datasets"
        )
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


class IdxDataset(Dataset[tuple[Any, int]]):
    """An MNIST-format split as a map-style dataset of ``(image, label)`` pairs.

    The image is a float32 tensor [1, H, W] scaled to [0, 1], passed through ``transform`` when
    one is given; the label is a Python int. The whole split is held in memory as uint8.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.images, self.labels = load_idx_split(root, split)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index].unsqueeze(0).to(torch.float32) / 255.0
        label = int(self.labels[index])
        if self.transform is not None:
            return self.transform(image), label
        return image, label
