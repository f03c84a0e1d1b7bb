"""Normalisation, reductions, pooling and resampling.

BatchNorm and InstanceNorm act on each channel alone: their parameters simply join the
channel. LayerNorm, GroupNorm and RMSNorm compute statistics *across* channels, so removing
a channel is valid but changes the function: those channels are marked mixing. A reduction
over a channel dimension (``x.mean(1)``) is the same. Pooling and interpolation act on the
spatial dimensions only; a channel dimension found there is blocked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from prunekit.graph._context import RuleContext, tensors_in
from prunekit.graph._labels import Factor
from prunekit.graph._registry import register_function_rule
from prunekit.graph.rules.contract import _arg, dim_labels
from prunekit.graph.rules.elementwise import first_tensor, output_tensor


def _join_params(
    ctx: RuleContext, channel_labels: np.ndarray | None, size: int, params: list[Any]
) -> None:
    target = channel_labels if channel_labels is not None else np.full(size, -1, dtype=np.int64)
    for p in params:
        if isinstance(p, torch.Tensor) and p.numel() > 1:
            labels = dim_labels(ctx, p, 0)
            ctx.union(
                target, labels if labels is not None else np.full(size, -1), "per-channel parameter"
            )


def _channel_only(ctx: RuleContext, x: torch.Tensor, cdim: int) -> np.ndarray | None:
    for f in ctx.factors(x):
        if f.dims != (cdim,):
            ctx.block(f.labels, "channels mixed with other dimensions")
    return dim_labels(ctx, x, cdim)


@register_function_rule("batch_norm", "instance_norm")
def batch_norm(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    cdim = 1 if x.dim() > 1 else 0
    labels = _channel_only(ctx, x, cdim)
    names = ("running_mean", "running_var", "weight", "bias")
    params = [_arg(args, kwargs, i + 1, n) for i, n in enumerate(names)]
    _join_params(ctx, labels, x.shape[cdim], params)
    ctx.set(output_tensor(out), [Factor((cdim,), labels)] if labels is not None else [])


@register_function_rule("layer_norm", "rms_norm")
def layer_norm(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    shape = _arg(args, kwargs, 1, "normalized_shape")
    n = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
    params = [_arg(args, kwargs, 2, "weight")] + (
        [_arg(args, kwargs, 3, "bias")] if ctx.op == "layer_norm" else []
    )
    normalized = set(range(x.dim() - n, x.dim()))
    factors = ctx.factors(x)
    if n != 1:
        for f in factors:
            if set(f.dims) & normalized:
                ctx.block(f.labels, "normalisation over several channel dimensions")
        for p in params:
            ctx.block_tensors([p], "normalisation over several channel dimensions")
        ctx.set(output_tensor(out), [f for f in factors if not set(f.dims) & normalized])
        return
    last = x.dim() - 1
    labels = None
    for f in factors:
        if last in f.dims and f.dims != (last,):
            rows = np.moveaxis(f.labels, f.dims.index(last), -1).reshape(-1, x.shape[last])
            ctx.union(np.broadcast_to(rows[:1], rows.shape), rows, "normalised channels")
            labels = rows[0]
        elif f.dims == (last,):
            labels = f.labels
    if labels is not None:
        ctx.mix(labels, "normalisation statistics over channels")
    _join_params(ctx, labels, x.shape[last], params)
    kept = [f for f in factors if last not in f.dims]
    if labels is not None:
        kept.append(Factor((last,), labels))
    ctx.set(output_tensor(out), kept)


@register_function_rule("group_norm")
def group_norm(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    groups = int(_arg(args, kwargs, 1, "num_groups"))
    labels = _channel_only(ctx, x, 1)
    c = x.shape[1]
    if labels is not None:
        ctx.mix(labels, "normalisation statistics over channels")
        per = labels.reshape(groups, c // groups)
        ctx.union(
            per[:1].repeat(groups - 1, axis=0), per[1:], "group normalisation keeps equal groups"
        )
    _join_params(ctx, labels, c, [_arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")])
    ctx.set(output_tensor(out), [Factor((1,), labels)] if labels is not None else [])


@register_function_rule("prelu")
def prelu(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x, w = args[0], args[1]
    cdim = 1 if x.dim() > 1 else 0
    if w.numel() > 1:
        labels = _channel_only(ctx, x, cdim)
        _join_params(ctx, labels, x.shape[cdim], [w])
    ctx.set(output_tensor(out), list(ctx.factors(x)))


def _reduced_dims(args: tuple[Any, ...], kwargs: dict[str, Any], ndim: int) -> list[int] | None:
    dim = (
        args[1]
        if len(args) > 1 and not isinstance(args[1], (bool, torch.dtype))
        else kwargs.get("dim", kwargs.get("axis"))
    )
    if dim is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim)
    return sorted({int(d) % ndim for d in dims}) if dims else None


@register_function_rule(
    "sum", "mean", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod",
    "argmax", "argmin", "any", "all", "nansum", "nanmean", "var_mean", "std_mean", "median",
    "count_nonzero",
)  # fmt: skip
def reduce(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = first_tensor(args)
    others = [t for t in tensors_in((args[1:], kwargs)) if ctx.factors(t)]
    if others and ctx.op in ("max", "min"):  # torch.max(a, b) is element-wise
        from prunekit.graph.rules.elementwise import elementwise

        elementwise(ctx, args, kwargs, out)
        return
    outs = list(tensors_in(out))
    dims = _reduced_dims(args, kwargs, x.dim())
    keepdim = bool(
        kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
    )
    reduced = set(range(x.dim())) if dims is None else set(dims)
    factors = []
    for f in ctx.factors(x):
        hit = [d for d in f.dims if d in reduced]
        if hit and ctx.is_param_derived(x):
            ctx.block(f.labels, "a parameter reduced over its channels")
            continue
        if hit:
            ctx.mix(f.labels, "reduction over channels")
            kept_axes = [i for i, d in enumerate(f.dims) if d not in reduced]
            if not kept_axes:
                continue
            moved = np.moveaxis(f.labels, kept_axes, list(range(len(kept_axes))))
            rows = moved.reshape(int(np.prod([f.labels.shape[a] for a in kept_axes])), -1)
            ctx.union(np.broadcast_to(rows[:, :1], rows.shape), rows, "partial reduction")
            labels = rows[:, 0].reshape([f.labels.shape[a] for a in kept_axes])
            dims_left = [d for d in f.dims if d not in reduced]
        else:
            labels, dims_left = f.labels, list(f.dims)
        if dims is None and not keepdim:
            continue
        if not keepdim:
            dims_left = [d - sum(r < d for r in reduced) for d in dims_left]
        factors.append(Factor(tuple(dims_left), labels))
    for o in outs:
        if o.dtype.is_floating_point or ctx.op not in (
            "max",
            "min",
            "median",
            "var_mean",
            "std_mean",
        ):
            ctx.set(o, factors if ctx.op not in ("argmax", "argmin", "count_nonzero") else [])


@register_function_rule("softmax", "log_softmax", "softmin", "cumsum", "cumprod", "normalize")
def along_dim(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    default = 1 if ctx.op == "normalize" else None
    dim = _arg(args, kwargs, 1 if ctx.op != "normalize" else 2, "dim", default)
    if dim is None:
        dim = -1
    dim = int(dim) % x.dim()
    for f in ctx.factors(x):
        if dim in f.dims:
            ctx.mix(f.labels, f"{ctx.op} across channels")
    ctx.set(output_tensor(out), list(ctx.factors(x)))


_SPATIAL = {
    "avg_pool1d": 1, "avg_pool2d": 2, "avg_pool3d": 3, "max_pool1d": 1, "max_pool2d": 2,
    "max_pool3d": 3, "adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2,
    "adaptive_avg_pool3d": 3, "adaptive_max_pool1d": 1, "adaptive_max_pool2d": 2,
    "adaptive_max_pool3d": 3, "lp_pool1d": 1, "lp_pool2d": 2, "lp_pool3d": 3,
    "max_pool2d_with_indices": 2, "adaptive_max_pool2d_with_indices": 2,
    "interpolate": 0, "upsample": 0, "upsample_nearest": 0, "upsample_bilinear": 0,
    "grid_sample": 0, "roi_align": 0, "roi_pool": 0, "fractional_max_pool2d": 2,
}  # fmt: skip


@register_function_rule(*_SPATIAL)
def spatial(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Pooling / resampling over the trailing spatial dims; the channel dim (1) passes."""
    x = args[0]
    factors = ctx.factors(x)
    for f in factors:
        if f.dims != (1,):
            ctx.block(f.labels, "channels on a pooled or resampled dimension")
    for t in list(tensors_in((args[1:], kwargs))):
        ctx.block_tensors([t], "channels used as pooling coordinates")
    labels = dim_labels(ctx, x, 1) if all(f.dims == (1,) for f in factors) else None
    for o in tensors_in(out):
        if (
            o.dtype.is_floating_point
            and o.dim() > 1
            and labels is not None
            and o.shape[1] == x.shape[1]
        ):
            ctx.set(o, [Factor((1,), labels)])


@register_function_rule("pixel_shuffle", "pixel_unshuffle", "channel_shuffle")
def pixel_shuffle(
    ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> None:
    x, o = args[0], output_tensor(out)
    labels = _channel_only(ctx, x, 1)
    if labels is None:
        return
    if ctx.op == "pixel_shuffle":  # C*r^2 -> C: each output channel is r^2 input channels
        r2 = x.shape[1] // o.shape[1]
        rows = labels.reshape(-1, r2)
        ctx.union(np.broadcast_to(rows[:, :1], rows.shape), rows, "pixel shuffle")
        ctx.set(o, [Factor((1,), rows[:, 0].copy())])
    elif ctx.op == "pixel_unshuffle":
        ctx.set(o, [Factor((1,), np.repeat(labels, o.shape[1] // x.shape[1]))])
    else:
        groups = int(args[1] if len(args) > 1 else kwargs["groups"])
        grid = labels.reshape(groups, -1)
        ctx.union(np.broadcast_to(grid[:1], grid.shape), grid, "channel shuffle")
        ctx.set(o, [Factor((1,), grid.T.reshape(-1).copy())])
