"""Weight sharing (Han et al. 2016, "Deep Compression"): each layer's surviving weights take one
of a few shared values, so the device stores a short code per weight instead of an int8 value.

The shared values live in int8 units of each output row's quantisation scale: row ``o`` of layer
``l`` holds ``scale[o] * centroid[code]``. Scales are fixed when sharing starts (``max |w| / 127``
per row) and later given to ``quantize_mlp(weight_scales=...)``, so the int8 weights are exactly
the rounded centroids and the codebook survives quantisation. During fine-tuning the centroids
stay real-valued (rounding them every step would swallow the small updates); they are rounded
once, at ``finalize``. Pruned weights (exact zeros) belong to no cluster and stay zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

_INT8_LIMIT = 127.0


@dataclass
class _SharedLayer:
    linear: nn.Linear
    scale: torch.Tensor  # [out, 1]
    codes: torch.Tensor  # int64 [out, in]; -1 marks a pruned weight
    centroids: torch.Tensor  # float64 [k], in int8 units


def _kmeans_1d(values: np.ndarray, k: int, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's algorithm in one dimension with linear initialisation (Han et al. found it keeps
    the rare large weights that density-based initialisation loses)."""
    k = min(k, len(np.unique(values)))
    centroids = np.linspace(values.min(), values.max(), k)
    order = np.argsort(values)
    sorted_values = values[order]
    for _ in range(iterations):
        bounds = (centroids[1:] + centroids[:-1]) / 2
        assignment = np.searchsorted(bounds, sorted_values)
        sums = np.bincount(assignment, weights=sorted_values, minlength=k)
        counts = np.bincount(assignment, minlength=k)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(updated, centroids):
            break
        centroids = np.sort(updated)
    bounds = (centroids[1:] + centroids[:-1]) / 2
    codes = np.empty(len(values), dtype=np.int64)
    codes[order] = np.searchsorted(bounds, sorted_values)
    return centroids, codes


class WeightSharing:
    """Cluster every Linear's non-zero weights into ``2**bits - 1`` shared values.

    One code is left for the value 0, which sparse formats need for their filler entries.
    ``project()`` (after each optimizer step) moves every centroid to the mean of its members'
    updated values -- the averaged-gradient update of Deep Compression -- and writes the shared
    values back into the weights.
    """

    def __init__(self, linears: list[nn.Linear], bits: int = 4) -> None:
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        self.bits = bits
        self.layers: list[_SharedLayer] = []
        for linear in linears:
            w = linear.weight.detach().to(torch.float64)
            row_max = w.abs().amax(dim=1, keepdim=True)
            scale = torch.where(row_max > 0, row_max / _INT8_LIMIT, torch.ones_like(row_max))
            units = (w / scale).numpy()
            nonzero = units != 0
            codes = np.full(units.shape, -1, dtype=np.int64)
            centroids = np.zeros(1)
            if nonzero.any():
                centroids, flat_codes = _kmeans_1d(units[nonzero], 2**bits - 1)
                codes[nonzero] = flat_codes
            self.layers.append(
                _SharedLayer(linear, scale, torch.from_numpy(codes), torch.from_numpy(centroids))
            )
        self.project()

    @torch.no_grad()
    def project(self) -> None:
        for layer in self.layers:
            w = layer.linear.weight
            units = w.detach().to(torch.float64) / layer.scale
            member = layer.codes >= 0
            k = len(layer.centroids)
            codes = layer.codes[member]
            sums = torch.zeros(k, dtype=torch.float64).index_add_(0, codes, units[member])
            counts = torch.bincount(codes, minlength=k).to(torch.float64)
            layer.centroids = torch.where(counts > 0, sums / counts.clamp(min=1), layer.centroids)
            layer.centroids.clamp_(-_INT8_LIMIT, _INT8_LIMIT)
            shared = torch.zeros_like(units)
            shared[member] = layer.centroids[codes]
            w.copy_((shared * layer.scale).to(w.dtype))

    @torch.no_grad()
    def finalize(self) -> list[np.ndarray]:
        """Round the centroids to integers (never to 0: that would prune a kept weight) and
        return the per-row scales for ``quantize_mlp(weight_scales=...)``."""
        for layer in self.layers:
            rounded = torch.round(layer.centroids)
            rounded = torch.where(rounded == 0, torch.sign(layer.centroids), rounded)
            layer.centroids = torch.where(layer.centroids == 0, 1.0, rounded)
        self.project_fixed()
        return [layer.scale.squeeze(1).numpy().astype(np.float64) for layer in self.layers]

    @torch.no_grad()
    def project_fixed(self) -> None:
        """Write the current centroids into the weights without updating them."""
        for layer in self.layers:
            w = layer.linear.weight
            member = layer.codes >= 0
            shared = torch.zeros(w.shape, dtype=torch.float64)
            shared[member] = layer.centroids[layer.codes[member]]
            w.copy_((shared * layer.scale).to(w.dtype))


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]
