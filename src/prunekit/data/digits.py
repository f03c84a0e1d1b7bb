"""scikit-learn's 8x8 handwritten digits (1797 real samples) as a tiny, offline test dataset.

It ships inside scikit-learn, so it needs no download: good for tests and examples that want
real images rather than noise. scikit-learn is an optional dependency (``prunekit[data]``) and is
imported only when these functions run.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from prunekit.errors import DataError

_MAX_PIXEL = 16.0  # load_digits stores pixel intensities as integers 0..16


def _sklearn_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise DataError(
            "the digits dataset needs scikit-learn; install it with pip install 'prunekit[data]'"
        ) from None


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Return all 1797 digits as (X float32 [N, 64] scaled to [0, 1], y int64 [N])."""
    bunch = _sklearn_module("sklearn.datasets").load_digits()
    features = (np.asarray(bunch.data) / _MAX_PIXEL).astype(np.float32)
    return features, np.asarray(bunch.target, dtype=np.int64)


def load_digits_split(
    split: str = "train", test_fraction: float = 0.25, seed: int = 0
) -> TensorDataset:
    """One side of a stratified train/test split of the digits, as a ``TensorDataset``.

    Items are (float32 image [1, 8, 8] in [0, 1], int64 label). The same ``test_fraction`` and
    ``seed`` always give the same split; its two sides are disjoint and together hold every
    sample, and each class appears in both in (nearly) the same proportion.
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    features, labels = digits_arrays()
    train_test_split = _sklearn_module("sklearn.model_selection").train_test_split
    try:
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
        )
    except ValueError as exc:
        # sklearn refuses a split that leaves fewer samples than classes on one side.
        raise DataError(
            f"cannot split the digits with test_fraction={test_fraction}: {exc}"
        ) from None
    # Sorted so that the dataset keeps the original sample order; shuffling is the loader's job.
    indices = np.sort(train_idx if split == "train" else test_idx)
    images = torch.from_numpy(features[indices]).reshape(-1, 1, 8, 8)
    return TensorDataset(images, torch.from_numpy(labels[indices]))
