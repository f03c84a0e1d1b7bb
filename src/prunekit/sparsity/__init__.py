"""Unstructured and N:M sparsity for gradual pruning with fine-tuning.

Unlike ``prunekit.pruning`` (which removes whole channels and shrinks tensors), this keeps
every shape and zeroes individual weights: ``magnitude_masks`` / ``nm_mask`` compute bool
masks (True = keep), ``MaskSet`` keeps them applied through optimizer steps, and
``GradualPruner`` raises the sparsity along a ``CubicSchedule`` during training.
"""

from __future__ import annotations

from prunekit.sparsity.masks import MaskSet, SparsityError, magnitude_masks, nm_mask
from prunekit.sparsity.schedule import CubicSchedule, GradualPruner

__all__ = [
    "CubicSchedule",
    "GradualPruner",
    "MaskSet",
    "SparsityError",
    "magnitude_masks",
    "nm_mask",
]
