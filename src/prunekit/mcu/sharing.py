"""Weight sharing (Han et al. 2016, "Deep Compression"): each layer's surviving weights take one
of a few shared values, so the device stores a short code per weight instead of an int8 value.

Shared values live in int8 units of the layer's quantisation scale: weight ``(o, i)`` holds
``scale * centroid[code]``, with one scale per layer (``max |w| / 127``) as in Deep Compression's
per-layer codebook, or optionally one per output row (``per_row_scale``: each row then scales
the shared values). Scales are fixed when sharing starts and later given to
``quantize_mlp(weight_scales=...)``, so the int8 weights are exactly the rounded centroids and
the codebook survives quantisation. One scale per layer gives every row the same requantisation
multiplier and shift, which the C code then stores once (``storage.row_arrays``): 5 bytes per
neuron saved, about 7% of a 60x-compressed LeNet-300-100, at no measurable accuracy cost.

Training is quantisation-aware: each Linear keeps a latent float weight, the forward pass uses
its projection onto the nearest shared value, and the gradient passes straight through to the
latent weight (the straight-through estimator of Bengio et al. 2013). Weights may therefore
change cluster as they learn -- with fixed assignments, as in Deep Compression, 3 or 7 shared
values cost noticeably more accuracy. After every optimizer step ``project()`` moves each
centroid to the mean of the latent weights assigned to it (one Lloyd step). Pruned weights
(exact zeros when sharing starts) belong to no cluster and stay zero.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

_INT8_LIMIT = 127.0


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 30) -> np.ndarray:
    """Sorted centroids by Lloyd's algorithm with linear initialisation (Han et al. found it
    keeps the rare large weights that density-based initialisation loses)."""
    k = min(k, len(np.unique(values)))
    centroids = np.linspace(values.min(), values.max(), k)
    for _ in range(iterations):
        assignment = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        sums = np.bincount(assignment, weights=values, minlength=k)
        counts = np.bincount(assignment, minlength=k)
        updated = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centroids))
        if np.allclose(updated, centroids):
            break
        centroids = updated
    return centroids


class _SharedValues(nn.Module):
    """Parametrization: latent weight -> nearest shared value (straight-through gradient)."""

    def __init__(self, weight: torch.Tensor, bits: int, per_row_scale: bool) -> None:
        super().__init__()
        w = weight.detach().to(torch.float64)
        row_max = w.abs().amax(dim=1, keepdim=True)
        if not per_row_scale:
            row_max = row_max.amax().expand_as(row_max).clone()
        self.scale = torch.where(row_max > 0, row_max / _INT8_LIMIT, torch.ones_like(row_max))
        self.kept = w != 0
        units = (w / self.scale)[self.kept].numpy()
        centroids = kmeans_1d(units, 2**bits - 1) if units.size else np.ones(1)
        # A buffer, so that restoring a state dict (early stopping) restores the centroids too.
        self.centroids: torch.Tensor
        self.register_buffer("centroids", torch.from_numpy(centroids))

    def codes(self, latent: torch.Tensor) -> torch.Tensor:
        units = latent.detach().to(torch.float64) / self.scale
        bounds = (self.centroids[1:] + self.centroids[:-1]) / 2
        return torch.bucketize(units, bounds)

    def shared(self, latent: torch.Tensor) -> torch.Tensor:
        values = self.centroids[self.codes(latent)] * self.scale
        return torch.where(self.kept, values, torch.zeros_like(values)).to(latent.dtype)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return latent + (self.shared(latent) - latent).detach()

    @torch.no_grad()
    def update_centroids(self, latent: torch.Tensor) -> None:
        units = latent.detach().to(torch.float64) / self.scale
        codes = self.codes(latent)[self.kept]
        k = len(self.centroids)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, codes, units[self.kept])
        counts = torch.bincount(codes, minlength=k).to(torch.float64)
        means = torch.where(counts > 0, sums / counts.clamp(min=1), self.centroids)
        self.centroids = torch.sort(means.clamp(-_INT8_LIMIT, _INT8_LIMIT)).values


class WeightSharing:
    """Quantisation-aware weight sharing of every given Linear: ``2**bits - 1`` shared values
    per layer, one code being left for the zero that sparse formats need for filler entries.

    Create it before the optimizer (it re-parametrizes the weights), call ``project()`` after
    each optimizer step, and ``finalize()`` at the end.
    """

    def __init__(
        self, linears: list[nn.Linear], bits: int = 4, per_row_scale: bool = False
    ) -> None:
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        self.bits = bits
        self.linears = linears
        self.shares: list[_SharedValues] = []
        for linear in linears:
            share = _SharedValues(linear.weight, bits, per_row_scale)
            parametrize.register_parametrization(linear, "weight", share)
            self.shares.append(share)

    def _latent(self, linear: nn.Linear) -> torch.Tensor:
        return linear.parametrizations.weight.original  # type: ignore[union-attr,return-value]

    def project(self) -> None:
        """One Lloyd step: every centroid moves to the mean of its latent weights."""
        for linear, share in zip(self.linears, self.shares, strict=True):
            share.update_centroids(self._latent(linear))

    @torch.no_grad()
    def finalize(self) -> list[np.ndarray]:
        """Round the centroids to integers (never to 0: that would prune a kept weight), bake
        the shared values into plain weights, and return the per-row scales for
        ``quantize_mlp(weight_scales=...)``."""
        scales = []
        for linear, share in zip(self.linears, self.shares, strict=True):
            rounded = torch.round(share.centroids)
            share.centroids = torch.where(rounded == 0, torch.sign(share.centroids), rounded)
            share.centroids[share.centroids == 0] = 1.0
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)
            scales.append(share.scale.squeeze(1).numpy().astype(np.float64))
        return scales


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]
