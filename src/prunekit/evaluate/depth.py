"""Standard monocular depth metrics (Eigen et al. 2014): AbsRel, RMSE and threshold accuracies."""

from __future__ import annotations

from typing import Any

import torch

from prunekit.errors import DataError

__all__ = ["depth_metrics"]


def depth_metrics(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> dict[str, Any]:
    """Depth error of ``pred`` against ``target`` over the valid pixels, pooled (every valid
    pixel of every image weighs the same).

    ``pred`` and ``target`` have the same shape, except that ``pred`` may carry one extra
    size-1 channel dimension (``[B, 1, H, W]`` against ``[B, H, W]``). ``valid``: a boolean
    mask of ``target``'s shape; default: the pixels whose target is finite and > 0 (a valid
    mask is still narrowed to those). Returns ``absrel`` = mean(|pred - t| / t), ``rmse`` =
    sqrt(mean((pred - t)^2)), ``delta1/2/3`` = the fraction of pixels with
    max(pred / t, t / pred) < 1.25, 1.25^2, 1.25^3 (a prediction <= 0 is never within), and
    ``pixels`` = the number of valid pixels. Computed in float64.
    """
    if pred.dim() == target.dim() + 1 and pred.shape[1] == 1:
        pred = pred.squeeze(1)
    if pred.shape != target.shape:
        raise DataError(
            f"depth prediction {list(pred.shape)} and target {list(target.shape)} differ in shape"
        )
    pred = pred.detach().to(torch.float64)
    target = target.detach().to(torch.float64)
    usable = torch.isfinite(target) & (target > 0)
    if valid is not None:
        if valid.shape != target.shape:
            raise DataError(f"valid mask {list(valid.shape)} is not of shape {list(target.shape)}")
        usable &= valid.to(torch.bool)
    p, t = pred[usable], target[usable]
    pixels = int(t.numel())
    if pixels == 0:
        raise DataError("no valid depth pixel to evaluate")
    if not bool(torch.isfinite(p).all()):
        raise DataError("the depth prediction is not finite at some valid pixel")
    error = p - t
    positive = p > 0
    ratio = torch.where(positive, torch.maximum(p / t, t / p.clamp(min=1e-300)), torch.inf)
    return {
        "absrel": float((error.abs() / t).mean()),
        "rmse": float(error.pow(2).mean().sqrt()),
        "delta1": float((ratio < 1.25).double().mean()),
        "delta2": float((ratio < 1.25**2).double().mean()),
        "delta3": float((ratio < 1.25**3).double().mean()),
        "pixels": pixels,
    }
