"""Small classification datasets held in memory as flat float tensors, for MLP deployment.

Everything here fits in memory (MNIST is 47 MB as float32), so training loops index tensors
directly instead of going through a DataLoader: on a 2-core machine that is several times faster.
A validation split is carved out of the training set with a fixed seed; the test set is only
used for the final report, never for choosing anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from prunekit.errors import DataError

DATASETS = ("digits", "mnist", "fashion-mnist")
_MNIST_CACHE = Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit")) / "mnist"


@dataclass
class Splits:
    """Train / validation / test tensors: x float32 [n, features] in [0, 1], y int64 [n]."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    image_shape: tuple[int, ...]

    @property
    def features(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def classes(self) -> int:
        return int(max(self.train_y.max(), self.test_y.max()).item()) + 1

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.train_y)} train / {len(self.val_y)} validation / "
            f"{len(self.test_y)} test samples of {self.features} features"
        )


def _split_validation(
    x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=generator)
    n_val = max(1, round(len(y) * fraction))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def load_digits_splits(seed: int = 0) -> Splits:
    """scikit-learn's 1797 8x8 digits: 25% test (stratified), then 15% of the rest for validation."""
    from prunekit.data.digits import load_digits_split

    train = load_digits_split("train", seed=seed)
    test = load_digits_split("test", seed=seed)
    train_x, train_y = (t.clone() for t in train.tensors)
    test_x, test_y = (t.clone() for t in test.tensors)
    tx, ty, vx, vy = _split_validation(train_x.flatten(1), train_y, 0.15, seed)
    return Splits("digits", tx, ty, vx, vy, test_x.flatten(1), test_y, (8, 8))


def load_idx_splits(name: str, root: str | Path, validation: int = 5000, seed: int = 0) -> Splits:
    """MNIST-format IDX files (MNIST, Fashion-MNIST) from ``root``; the last check is the shapes."""
    from prunekit.data.idx import load_idx_split

    train_images, train_labels = load_idx_split(root, "train")
    test_images, test_labels = load_idx_split(root, "test")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"{root}: train images are {tuple(train_images.shape[1:])} but test images are "
            f"{tuple(test_images.shape[1:])}; the files belong to different datasets"
        )
    if len(train_labels) <= validation:
        raise DataError(
            f"{root}: only {len(train_labels)} training samples; need more than the "
            f"{validation} held out for validation"
        )
    x = train_images.flatten(1).to(torch.float32) / 255.0
    tx, ty, vx, vy = _split_validation(x, train_labels, validation / len(train_labels), seed)
    test_x = test_images.flatten(1).to(torch.float32) / 255.0
    return Splits(name, tx, ty, vx, vy, test_x, test_labels, tuple(train_images.shape[1:]))


def _download_mnist() -> Path:
    """Fetch MNIST with torchvision into the prunekit cache; offline this fails clearly."""
    from prunekit.data.specs import mnist_root

    return mnist_root(_MNIST_CACHE, "--data-dir")


def load_splits(name: str, data_dir: str | Path | None = None, seed: int = 0) -> Splits:
    """Resolve ``--dataset`` / ``--data-dir`` to in-memory splits."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "digits":
        if data_dir is not None:
            raise DataError("the digits dataset is built in; drop --data-dir")
        return load_digits_splits(seed)
    if data_dir is None:
        if name == "fashion-mnist":
            from prunekit.data.idx import FASHION_MNIST_DEBIAN_DIR

            if FASHION_MNIST_DEBIAN_DIR.is_dir():
                return load_idx_splits(name, FASHION_MNIST_DEBIAN_DIR, seed=seed)
            raise DataError(
                "fashion-mnist needs --data-dir with its four IDX files (on Debian: apt install "
                "dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist)"
            )
        return load_idx_splits(name, _download_mnist(), seed=seed)
    return load_idx_splits(name, data_dir, seed=seed)
