"""Datasets for measuring accuracy: MNIST-format IDX files, sklearn digits, image folders."""

from __future__ import annotations

from prunekit.data.digits import digits_arrays, load_digits_split
from prunekit.data.idx import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DEBIAN_DIR,
    IdxDataset,
    find_idx_files,
    load_idx_split,
    read_idx,
    write_idx,
)
from prunekit.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, image_folder_dataset

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEBIAN_DIR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IdxDataset",
    "digits_arrays",
    "find_idx_files",
    "image_folder_dataset",
    "load_digits_split",
    "load_idx_split",
    "read_idx",
    "write_idx",
]
