"""Operations that move elements without computing: views, permutations, expansion, flips.

Labels travel with the elements. For a reshape the label grid is reshaped exactly like the
tensor, which handles flatten-into-linear (each channel becomes a block of features) and
channel shuffles. A reshape that *splits* a channel dimension (``[B, L, E] -> [B, L, H, D]``)
must keep working after pruning: only one of the new sizes can shrink, the one the code
computes (``-1``, or by convention the innermost). Channels are therefore coupled across the
other new dimensions: with ``view(B, L, -1, D)`` all ``D`` features of a head go together
(head pruning); with ``view(B, groups, -1, H, W)`` the same offset goes in every group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from prunekit.graph._context import RuleContext
from prunekit.graph._labels import Factor, factor_from_grid
from prunekit.graph._registry import register_function_rule
from prunekit.graph.rules.elementwise import first_tensor, output_tensor


def reshape_blocks(src: Sequence[int], dst: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair groups of source and destination dims whose sizes multiply to the same number."""
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) and j < len(dst):
        bi, bj = [i], [j]
        pi, pj = src[i], dst[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(src):
                bi.append(i)
                pi *= src[i]
                i += 1
            elif j < len(dst):
                bj.append(j)
                pj *= dst[j]
                j += 1
            else:
                break
        blocks.append((bi, bj))
    if blocks:
        blocks[-1][0].extend(range(i, len(src)))
        blocks[-1][1].extend(range(j, len(dst)))
    return blocks


def union_along(ctx: RuleContext, grid: np.ndarray, axes: list[int]) -> None:
    """Couple all labels that differ only in their position along ``axes``."""
    if not axes:
        return
    moved = np.moveaxis(grid, axes, list(range(grid.ndim - len(axes), grid.ndim)))
    flat = moved.reshape(-1, int(np.prod([grid.shape[a] for a in axes])))
    if flat.shape[1] > 1:
        ctx.union(
            np.broadcast_to(flat[:, :1], flat[:, 1:].shape), flat[:, 1:], "split channel dimension"
        )


def reshape_labels(
    ctx: RuleContext, x: torch.Tensor, out: torch.Tensor, requested: Sequence[int] | None
) -> None:
    src, dst = tuple(x.shape), tuple(out.shape)
    factors = []
    for f in ctx.factors(x):
        grid = np.ascontiguousarray(f.grid(src)).reshape(dst)
        for bi, bj in reshape_blocks(src, dst):
            if not set(bi) & set(f.dims):
                continue
            big = [d for d in bj if dst[d] > 1]
            if len(big) < 2:
                continue
            dynamic = big[-1]
            if requested is not None and len(requested) == len(dst):
                dynamic = next((d for d in big if requested[d] == -1), dynamic)
            union_along(ctx, grid, [d for d in big if d != dynamic])
        factors.append(factor_from_grid(grid))
    ctx.set(out, factors)


def _requested_shape(args: tuple[Any, ...]) -> list[int] | None:
    rest = args[1:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
        rest = tuple(rest[0])
    if all(isinstance(r, int) for r in rest):
        return [int(r) for r in rest]
    return None


@register_function_rule("view", "reshape")
def view(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    if "dtype" in kwargs or (len(args) == 2 and isinstance(args[1], torch.dtype)):
        ctx.block_tensors([args[0]], "view as another dtype")
        return
    shape = kwargs.get("shape")
    requested = list(shape) if shape is not None else _requested_shape(args)
    reshape_labels(ctx, args[0], out, requested)


@register_function_rule(
    "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel", "atleast_2d"
)
def merge_or_pad_dims(
    ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> None:
    x = first_tensor(args)
    requested = None
    if ctx.op == "unflatten":
        dim, sizes = (args[1], args[2]) if len(args) > 2 else (kwargs["dim"], kwargs["sizes"])
        dim = dim % x.dim()
        requested = [*x.shape[:dim], *sizes, *x.shape[dim + 1 :]]
    reshape_labels(ctx, x, output_tensor(out), requested)


def permute_factors(factors: list[Factor], perm: Sequence[int]) -> list[Factor]:
    """``out.dim(k) == in.dim(perm[k])``."""
    where = {p: k for k, p in enumerate(perm)}
    result = []
    for f in factors:
        new_dims = [where[d] for d in f.dims]
        order = np.argsort(new_dims)
        result.append(Factor(tuple(sorted(new_dims)), np.transpose(f.labels, order)))
    return result


def _dims_arg(args: tuple[Any, ...], kwargs: dict[str, Any], key: str) -> list[int]:
    rest = args[1:] if len(args) > 1 else kwargs.get(key, ())
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = rest[0]
    return [int(d) for d in rest]


@register_function_rule("permute")
def permute(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    perm = [d % x.dim() for d in _dims_arg(args, kwargs, "dims")]
    ctx.set(out, permute_factors(ctx.factors(x), perm))


@register_function_rule("transpose", "swapaxes", "swapdims", "t", "getattr:T", "getattr:mT")
def transpose(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    n = x.dim()
    if ctx.op in ("t", "getattr:T"):
        d0, d1 = (0, 1) if n == 2 else (0, 0)
        if ctx.op == "getattr:T" and n > 2:
            perm = list(reversed(range(n)))
            ctx.set(out, permute_factors(ctx.factors(x), perm))
            return
    elif ctx.op == "getattr:mT":
        d0, d1 = n - 2, n - 1
    else:
        d0 = int(args[1] if len(args) > 1 else kwargs.get("dim0", kwargs.get("axis0", 0)))
        d1 = int(args[2] if len(args) > 2 else kwargs.get("dim1", kwargs.get("axis1", 1)))
    perm = list(range(n))
    perm[d0 % n], perm[d1 % n] = perm[d1 % n], perm[d0 % n]
    ctx.set(out, permute_factors(ctx.factors(x), perm))


@register_function_rule("movedim", "moveaxis")
def movedim(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    n = x.dim()
    src = args[1] if len(args) > 1 else kwargs["source"]
    dst = args[2] if len(args) > 2 else kwargs["destination"]
    src = [s % n for s in ([src] if isinstance(src, int) else src)]
    dst = [d % n for d in ([dst] if isinstance(dst, int) else dst)]
    order: list[int | None] = [None] * n
    for s, d in zip(src, dst, strict=True):
        order[d] = s
    rest = iter(i for i in range(n) if i not in src)
    perm = [o if o is not None else next(rest) for o in order]
    ctx.set(out, permute_factors(ctx.factors(x), perm))


@register_function_rule("expand", "expand_as", "broadcast_to")
def expand(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x, o = args[0], output_tensor(out)
    shift = o.dim() - x.dim()
    ctx.set(o, [Factor(tuple(d + shift for d in f.dims), f.labels) for f in ctx.factors(x)])


@register_function_rule("repeat", "tile")
def repeat(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x, o = args[0], output_tensor(out)
    reps = _dims_arg(args, kwargs, "repeats" if ctx.op == "repeat" else "dims")
    reps = [1] * (o.dim() - len(reps)) + reps
    shift = o.dim() - x.dim()
    factors = []
    for f in ctx.factors(x):
        dims = tuple(d + shift for d in f.dims)
        factors.append(Factor(dims, np.tile(f.labels, [reps[d] for d in dims])))
    ctx.set(o, factors)


@register_function_rule("flip", "fliplr", "flipud")
def flip(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    if ctx.op == "fliplr":
        dims = [1]
    elif ctx.op == "flipud":
        dims = [0]
    else:
        dims = _dims_arg(args, kwargs, "dims")
    dims = [d % x.dim() for d in dims]
    factors = []
    for f in ctx.factors(x):
        axes = [f.dims.index(d) for d in dims if d in f.dims]
        factors.append(Factor(f.dims, np.flip(f.labels, tuple(axes)) if axes else f.labels))
    ctx.set(out, factors)


@register_function_rule("roll")
def roll(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    shifts = args[1] if len(args) > 1 else kwargs["shifts"]
    dims = args[2] if len(args) > 2 else kwargs.get("dims")
    if dims is None:
        ctx.block_tensors([x], "roll over the flattened tensor")
        return
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [d % x.dim() for d in ([dims] if isinstance(dims, int) else dims)]
    factors = []
    for f in ctx.factors(x):
        labels = f.labels
        for s, d in zip(shifts, dims, strict=True):
            if d in f.dims:
                labels = np.roll(labels, s, axis=f.dims.index(d))
        factors.append(Factor(f.dims, labels))
    ctx.set(out, factors)
