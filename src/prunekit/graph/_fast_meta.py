"""Cheap shape propagation on the meta device for the most common operations.

On ``meta`` tensors PyTorch still runs Python decompositions (BatchNorm alone is dozens of
primitive ops; even ``relu`` goes through reference implementations), which is most of the
cost of a meta forward pass. Normalisation and element-wise operations keep (or broadcast)
their inputs' shapes, so ``FastMetaNorms`` answers them with an empty tensor of the right
shape after checking what pruning can break: that per-channel parameters match the input's
channels and that operands broadcast. Rehearsals therefore still fail where the real model
would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode


def _check(size: int, tensors: list[Any], what: str) -> None:
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel() != size:
            raise RuntimeError(f"{what}: expected {size} per-channel values, got {t.numel()}")


def _batch_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    x = args[0]
    params = list(args[1:5]) + [
        kwargs.get(k) for k in ("running_mean", "running_var", "weight", "bias")
    ]
    _check(x.shape[1] if x.dim() > 1 else x.shape[0], params, "batch_norm")


def _layer_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    x, shape = args[0], tuple(args[1] if len(args) > 1 else kwargs["normalized_shape"])
    if tuple(x.shape[-len(shape) :]) != shape:
        raise RuntimeError(
            f"layer_norm: normalized_shape {shape} does not match input {tuple(x.shape)}"
        )
    size = int(torch.Size(shape).numel())
    _check(size, [*args[2:4], kwargs.get("weight"), kwargs.get("bias")], "layer_norm")


def _group_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    x, groups = args[0], int(args[1] if len(args) > 1 else kwargs["num_groups"])
    if x.shape[1] % groups:
        raise RuntimeError(
            f"group_norm: {x.shape[1]} channels are not divisible by {groups} groups"
        )
    _check(x.shape[1], [*args[2:4], kwargs.get("weight"), kwargs.get("bias")], "group_norm")


_CHECKS = {
    "batch_norm": _batch_norm,
    "instance_norm": _batch_norm,
    "layer_norm": _layer_norm,
    "group_norm": _group_norm,
}
_UNARY = frozenset(
    {"relu", "relu6", "gelu", "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "dropout",
     "hardtanh", "leaky_relu", "elu", "mish", "softplus"}
)  # fmt: skip
_BINARY = frozenset(
    {
        "add",
        "sub",
        "mul",
        "div",
        "__add__",
        "__sub__",
        "__mul__",
        "__truediv__",
        "__radd__",
        "__rmul__",
    }
)
_INPLACE = frozenset(
    {
        "__iadd__",
        "__imul__",
        "add_",
        "mul_",
        "relu_",
        "hardswish_",
        "silu_",
        "sigmoid_",
        "hardtanh_",
    }
)


def _binary(args: tuple[Any, ...]) -> torch.Tensor | None:
    a, b = args[0], args[1]
    tensors = [t for t in (a, b) if isinstance(t, torch.Tensor)]
    if any(t.device.type != "meta" for t in tensors):
        return None
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    return torch.empty(shape, dtype=torch.result_type(a, b), device="meta")


def _conv(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """conv1d/2d/3d output shape; the channel checks the real kernel makes, nothing else."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    a = dict(zip(names, args, strict=False)) | kwargs
    x, w = a["input"], a["weight"]
    spatial = w.dim() - 2
    groups = int(a.get("groups", 1))
    if x.dim() != spatial + 2 or w.device.type != "meta":
        return None  # unbatched input or a real weight: let PyTorch decide
    if w.shape[1] * groups != x.shape[1] or w.shape[0] % groups:
        raise RuntimeError(
            f"{name}: weight {tuple(w.shape)} with groups={groups} does not fit input {tuple(x.shape)}"
        )
    bias = a.get("bias")
    if bias is not None and bias.numel() != w.shape[0]:
        raise RuntimeError(f"{name}: bias of {bias.numel()} for {w.shape[0]} output channels")

    def per_dim(value: Any, default: int) -> list[int]:
        value = default if value is None else value
        return [int(value)] * spatial if isinstance(value, int) else [int(v) for v in value]

    stride, dilation = per_dim(a.get("stride"), 1), per_dim(a.get("dilation"), 1)
    padding = a.get("padding", 0)
    out = []
    for i in range(spatial):
        size, k = x.shape[2 + i], w.shape[2 + i]
        if padding == "same":
            out.append(size)
            continue
        pad = 0 if padding == "valid" else per_dim(padding, 0)[i]
        out.append((size + 2 * pad - dilation[i] * (k - 1) - 1) // stride[i] + 1)
    if min(out) < 1:
        raise RuntimeError(
            f"{name}: input {tuple(x.shape)} is too small for kernel {tuple(w.shape)}"
        )
    return torch.empty((x.shape[0], w.shape[0], *out), dtype=x.dtype, device="meta")


def fast_meta_norm(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The result of a common call on meta tensors, or None to run ``func`` itself."""
    if not args or not isinstance(args[0], torch.Tensor) or args[0].device.type != "meta":
        return None
    name = getattr(func, "__name__", "")
    check = _CHECKS.get(name)
    if check is not None:
        check(args, kwargs)
        return torch.empty_like(args[0])
    if name in _UNARY:
        return args[0] if kwargs.get("inplace") else torch.empty_like(args[0])
    if name in ("conv1d", "conv2d", "conv3d"):
        return _conv(name, args, kwargs)
    if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d") and not kwargs and len(args) == 2:
        x, size = args
        size = (size, size) if isinstance(size, int) else tuple(size)
        out = tuple(x.shape[-2 + i] if s is None else s for i, s in enumerate(size))
        return torch.empty((*x.shape[:-2], *out), dtype=x.dtype, device="meta")
    if name in _BINARY and len(args) == 2 and not kwargs:
        return _binary(args)
    if name in _INPLACE:
        other = args[1] if len(args) == 2 else None
        if (
            isinstance(other, torch.Tensor)
            and torch.broadcast_shapes(args[0].shape, other.shape) != args[0].shape
        ):
            raise RuntimeError(
                f"{name}: shapes {tuple(args[0].shape)} and {tuple(args[1].shape)} do not match"
            )
        return args[0]
    return None


class FastMetaNorms(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        fast = fast_meta_norm(func, args, kwargs)
        return fast if fast is not None else func(*args, **kwargs)
