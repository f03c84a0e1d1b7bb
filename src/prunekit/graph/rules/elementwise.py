"""Element-wise operations: activations, arithmetic, comparisons, ``where``.

An element-wise op keeps every channel where it was, so output labels are input labels.
With several tensor operands (a residual ``x + y``, a gate ``x * s``) channels at the same
position are coupled: removing channel c of ``x`` requires removing channel c of ``y``.
Broadcasting is respected: an operand of size 1 along the channel dimension (a scalar gate,
a per-sample scale) couples nothing, but an operand that has real, unlabelled values there
(data, a constant) makes the channels unremovable.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import torch

from prunekit.graph._context import RuleContext, tensors_in
from prunekit.graph._labels import Factor
from prunekit.graph._registry import register_function_rule

UNARY = (
    "relu", "relu6", "gelu", "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "elu",
    "selu", "celu", "leaky_relu", "softplus", "softsign", "mish", "hardtanh", "threshold",
    "logsigmoid", "tanhshrink", "hardshrink", "softshrink", "rrelu",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "clone", "contiguous", "detach", "to", "type", "type_as", "float", "half", "double",
    "bfloat16", "cpu", "cuda", "requires_grad_", "getattr:data", "pos", "positive",
    "neg", "negative", "abs", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p",
    "sqrt", "rsqrt", "square", "erf", "erfc", "erfinv", "sin", "cos", "sign", "sgn",
    "reciprocal", "floor", "ceil", "round", "trunc", "frac", "nan_to_num", "logit",
    "isnan", "isinf", "isfinite", "logical_not", "bitwise_not", "invert", "fill_", "zero_",
    "stochastic_depth_eval", "sigmoid_", "relu_", "hardswish_", "hardsigmoid_",
)  # fmt: skip

NARY = (
    "add", "sub", "mul", "div", "true_divide", "truediv", "floordiv", "floor_divide", "mod",
    "remainder", "fmod", "pow", "float_power", "maximum", "minimum", "fmax", "fmin", "atan2",
    "where", "masked_fill", "lerp", "addcmul", "addcdiv", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_and", "logical_or", "logical_xor", "bitwise_and", "bitwise_or", "and", "or", "xor",
    "hypot", "copysign", "xlogy", "heaviside", "clamp", "clip", "clamp_min", "clamp_max",
    "radd", "rsub", "rmul", "rtruediv", "rpow", "rfloordiv", "rmod", "rand", "ror", "rxor",
)  # fmt: skip

# Ops whose extra tensor arguments only supply a dtype, device or shape, not values.
REFERENCE_ONLY = frozenset({"to", "type", "type_as", "cpu", "cuda", "float", "half", "double"})


def first_tensor(args: tuple[Any, ...]) -> torch.Tensor:
    return next(tensors_in(args))


def output_tensor(out: Any) -> torch.Tensor:
    """The (first) tensor an operation returned; a rule that finds none fails safely."""
    tensor = next(tensors_in(out), None)
    if tensor is None:
        raise ValueError("the operation returned no tensor")
    return tensor


def _aligned(f: Factor, ndim_in: int, ndim_out: int) -> tuple[int, ...]:
    shift = ndim_out - ndim_in
    return tuple(d + shift for d in f.dims)


def couple_broadcast(
    ctx: RuleContext, tensors: list[torch.Tensor], shape: tuple[int, ...]
) -> list[Factor]:
    """Couple the channels of ``tensors`` broadcast to ``shape``; return the result's factors."""
    ndim = len(shape)
    by_dims: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
    for i, t in enumerate(tensors):
        for f in ctx.factors(t):
            by_dims.setdefault(_aligned(f, t.dim(), ndim), []).append((i, f.labels))
    clashing = set()
    for a, b in combinations(by_dims, 2):
        if set(a) & set(b):
            clashing |= {a, b}
    result = []
    for dims, entries in by_dims.items():
        if dims in clashing:
            for _, labels in entries:
                ctx.block(labels, "operands carry channels on different dimension layouts")
            continue
        rep = entries[0][1]
        for _, labels in entries[1:]:
            ctx.union(rep, labels)
        holders = {i for i, _ in entries}
        unlabelled = [
            t for i, t in enumerate(tensors)
            if i not in holders and any(d - (ndim - t.dim()) >= 0 and t.shape[d - (ndim - t.dim())] != 1 for d in dims)
        ]  # fmt: skip
        if unlabelled:
            # e.g. position embeddings along the sequence: no identity survives the sum there
            ctx.block(rep, "channels meet an operand with unlabelled values")
            continue
        result.append(Factor(dims, rep))
    return result


@register_function_rule(*NARY)
def elementwise(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    o = output_tensor(out)
    tensors = [t for t in tensors_in((args, kwargs)) if t.dim() <= o.dim()]
    ctx.set(o, list(couple_broadcast(ctx, tensors, tuple(o.shape))))


@register_function_rule(*UNARY)
def unary(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = first_tensor((args, kwargs))
    o = output_tensor(out)
    others = [t for t in tensors_in((args[1:], kwargs)) if ctx.factors(t)]
    if others and ctx.op.rstrip("_") not in REFERENCE_ONLY:
        elementwise(ctx, args, kwargs, out)
        return
    if tuple(o.shape) != tuple(x.shape):
        ctx.block_tensors([x], "shape changed unexpectedly")
        return
    ctx.set(o, list(ctx.factors(x)))


@register_function_rule("copy_")
def copy_into(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    dst, src = args[0], args[1]
    if ctx.is_blank(dst) and not ctx.factors(dst):
        ctx.set(dst, list(couple_broadcast(ctx, [src], tuple(dst.shape))))
    else:
        elementwise(ctx, args, kwargs, out)
