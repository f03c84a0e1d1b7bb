"""Indexing, concatenation and splitting.

Concatenation along the channel dimension appends label arrays (DenseNet, Inception); along
another dimension it couples the operands' channels (a class token joined to patch tokens).
``chunk`` into equal parts stays valid after pruning only if every part loses the same
number of channels, so the same offset is coupled across parts (ShuffleNetV2). Indexing a
channel dimension by position (``x[:, 5]``, ``x[:, 2:10]``) stays valid only if no channel
before the position can be removed on its own: that is checked once all couplings are known.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from prunekit.graph._context import RuleContext, tensors_in
from prunekit.graph._labels import Factor, factor_from_grid
from prunekit.graph._registry import register_function_rule
from prunekit.graph.rules.elementwise import output_tensor


def _grid(ctx: RuleContext, t: torch.Tensor) -> np.ndarray | None:
    """Full label grid of ``t`` (one factor), all -1 if unlabelled; None for several factors."""
    factors = ctx.factors(t)
    if len(factors) > 1:
        return None
    if not factors:
        return np.full(tuple(t.shape), -1, dtype=np.int64)
    return np.ascontiguousarray(factors[0].grid(tuple(t.shape)))


def _numpy_index(pairs: list[tuple[Any, list[int]]]) -> tuple[Any, ...]:
    """The same index, usable on a numpy label grid.

    Tensor entries use their values when they have some; on the meta device (no values) they
    become zeros of the same shape, which is only right where the indexed dimensions carry
    no labels (every position there holds the same label), the only case rules allow.
    """
    result: list[Any] = []
    for entry, _dims in pairs:
        if isinstance(entry, torch.Tensor):
            if entry.device.type != "meta":
                result.append(entry.detach().cpu().numpy())
            elif entry.dtype == torch.bool:
                raise ValueError("a boolean mask on the meta device has no values")
            else:
                result.append(np.zeros(tuple(entry.shape), dtype=np.int64))
        elif isinstance(entry, (list, tuple)):
            result.append(np.asarray(entry))
        else:
            result.append(entry)
    return tuple(result)


def _expand_index(index: Any, ndim: int) -> list[tuple[Any, list[int]]]:
    """Pair each index entry with the input dims it consumes (Ellipsis expanded)."""
    entries = list(index) if isinstance(index, tuple) else [index]

    def consumes(e: Any) -> int:
        if e is None or e is Ellipsis:
            return 0
        if isinstance(e, torch.Tensor) and e.dtype == torch.bool:
            return e.dim()
        return 1

    used = sum(consumes(e) for e in entries)
    expanded: list[Any] = []
    for e in entries:
        if e is Ellipsis:
            expanded += [slice(None)] * (ndim - used)
        else:
            expanded.append(e)
    if Ellipsis not in entries:
        expanded += [slice(None)] * (ndim - used)
    pairs = []
    d = 0
    for e in expanded:
        n = consumes(e)
        pairs.append((e, list(range(d, d + n))))
        d += n
    return pairs


def _is_full(entry: Any, size: int) -> bool:
    return isinstance(entry, slice) and slice(*entry.indices(size)) == slice(0, size, 1)


@register_function_rule("getitem")
def getitem(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x, index = args[0], args[1]
    o = output_tensor(out)
    pairs = _expand_index(index, x.dim())
    factors = ctx.factors(x)
    labelled_dims = {d for f in factors for d in f.dims}
    for entry, dims in pairs:
        touched = [d for d in dims if d in labelled_dims]
        if not touched or all(_is_full(entry, x.shape[d]) for d in touched):
            continue
        if isinstance(entry, (torch.Tensor, list, tuple)):
            ctx.block_tensors([x], "channels gathered by an index tensor")
            return
        for f in factors:
            for d in touched:
                if d in f.dims:
                    axis = f.dims.index(d)
                    ctx.require_uniform(
                        np.moveaxis(f.labels, axis, -1), "channels indexed by position"
                    )
    results = []
    for f in factors:
        grid = np.ascontiguousarray(f.grid(tuple(x.shape)))
        picked = grid[_numpy_index(pairs)]
        if tuple(picked.shape) != tuple(o.shape):
            ctx.block_tensors([x], "could not follow this indexing")
            return
        results.append(factor_from_grid(picked))
    ctx.set(o, results)


@register_function_rule("setitem")
def setitem(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x, index, value = args[0], args[1], args[2]
    if not isinstance(value, torch.Tensor):
        return  # writing a number leaves every channel where it was
    if not ctx.factors(value) and not ctx.factors(x):
        return
    pairs = _expand_index(index, x.dim())
    labelled = {d for f in ctx.factors(x) for d in f.dims}
    for entry, dims in pairs:
        if [d for d in dims if d in labelled] and not all(
            _is_full(entry, x.shape[d]) for d in dims
        ):
            ctx.block_tensors([x, value], "write into channels by position")
            return
    xg = _grid(ctx, x)
    vg = _grid(ctx, value)
    if xg is None or vg is None:
        ctx.block_tensors([x, value], "write with several channel layouts")
        return
    np_index = _numpy_index(pairs)
    target = xg[np_index]
    vg = np.broadcast_to(vg, target.shape)
    if ctx.is_blank(x) and not ctx.factors(x):
        xg[np_index] = vg
    else:
        ctx.union(target, vg, "write into a tensor with other channels")
        xg[np_index] = np.where(target >= 0, target, vg)
    blank = ctx.is_blank(x)
    ctx.set(x, [factor_from_grid(xg)])
    if blank:
        ctx.mark_blank(x)  # still blank where nothing was written yet


def _cat_dim(args: tuple[Any, ...], kwargs: dict[str, Any], ndim: int) -> int:
    dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
    return int(dim) % ndim


@register_function_rule("cat", "concat", "concatenate")
def cat(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    tensors = list(tensors_in(args[0] if args else kwargs["tensors"]))
    o = output_tensor(out)
    tensors = [t for t in tensors if t.dim() == o.dim()]  # legacy empty tensors are skipped
    dim = _cat_dim(args, kwargs, o.dim())
    along: list[np.ndarray] = []
    across: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
    for i, t in enumerate(tensors):
        own = np.full(t.shape[dim], -1, dtype=np.int64)
        for f in ctx.factors(t):
            if f.dims == (dim,):
                own = f.labels
            elif dim in f.dims:
                _cat_general(ctx, tensors, dim, o)
                return
            else:
                across.setdefault(f.dims, []).append((i, f.labels))
        along.append(own)
    factors: list[Factor | None] = []
    joined = np.concatenate(along) if along else np.zeros(0, dtype=np.int64)
    if np.any(joined >= 0):
        factors.append(Factor((dim,), joined))
    for dims, entries in across.items():
        rep = entries[0][1]
        for _, labels in entries[1:]:
            ctx.union(rep, labels)
        if len(entries) < len(tensors):
            ctx.block(rep, "channels meet an operand with unlabelled values")
        factors.append(Factor(dims, rep))
    ctx.set(o, factors)


def _cat_general(ctx: RuleContext, tensors: list[torch.Tensor], dim: int, o: torch.Tensor) -> None:
    grids = [_grid(ctx, t) for t in tensors]
    if any(g is None for g in grids):
        ctx.block_tensors(tensors, "concatenation with several channel layouts")
        return
    ctx.set(o, [factor_from_grid(np.concatenate(grids, axis=dim))])  # type: ignore[arg-type]


@register_function_rule("stack")
def stack(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    tensors = list(tensors_in(args[0] if args else kwargs["tensors"]))
    o = output_tensor(out)
    dim = _cat_dim(args, kwargs, o.dim())
    across: dict[tuple[int, ...], list[np.ndarray]] = {}
    for t in tensors:
        for f in ctx.factors(t):
            across.setdefault(tuple(d + (d >= dim) for d in f.dims), []).append(f.labels)
    factors = []
    for dims, labels in across.items():
        for other in labels[1:]:
            ctx.union(labels[0], other)
        if len(labels) < len(tensors):
            ctx.block(labels[0], "channels meet an operand with unlabelled values")
        factors.append(Factor(dims, labels[0]))
    ctx.set(o, factors)


def _split_outputs(
    ctx: RuleContext, x: torch.Tensor, outs: list[torch.Tensor], dim: int, equal: bool
) -> None:
    factors = ctx.factors(x)
    per_out: list[list[Factor | None]] = [[] for _ in outs]
    for f in factors:
        if dim not in f.dims:
            for k in range(len(outs)):
                per_out[k].append(f)
            continue
        axis = f.dims.index(dim)
        sizes = [t.shape[dim] for t in outs]
        if equal and len(set(sizes)) == 1 and len(outs) > 1:
            parts = np.stack(np.split(f.labels, len(outs), axis=axis))
            ctx.union(np.broadcast_to(parts[:1], parts[1:].shape), parts[1:], "equal split")
        elif len(outs) > 1:
            ctx.require_uniform(
                np.moveaxis(f.labels, axis, -1), "channels split at fixed positions"
            )
        start = 0
        for k, size in enumerate(sizes):
            piece = np.take(f.labels, range(start, start + size), axis=axis)
            start += size
            per_out[k].append(
                factor_from_grid(
                    np.ascontiguousarray(Factor(f.dims, piece).grid(tuple(outs[k].shape)))
                )
            )
    for t, fs in zip(outs, per_out, strict=True):
        ctx.set(t, fs)


@register_function_rule("chunk", "split", "tensor_split", "split_with_sizes")
def split(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    outs = list(tensors_in(out))
    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    dim = int(dim) % x.dim()
    sizes_arg = (
        args[1] if len(args) > 1 else kwargs.get("chunks", kwargs.get("split_size_or_sections"))
    )
    equal = ctx.op == "chunk" or (ctx.op == "split" and isinstance(sizes_arg, int))
    _split_outputs(ctx, x, outs, dim, equal)


@register_function_rule("unbind")
def unbind(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    dim = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % x.dim()
    outs = list(tensors_in(out))
    for f in ctx.factors(x):
        if dim in f.dims:
            ctx.require_uniform(
                np.moveaxis(f.labels, f.dims.index(dim), -1), "channels indexed by position"
            )
    for k, t in enumerate(outs):
        index: list[Any] = [slice(None)] * x.dim()
        index[dim] = k
        getitem(ctx, (x, tuple(index)), {}, t)


@register_function_rule("select", "narrow")
def select(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    dim = int(args[1] if len(args) > 1 else kwargs["dim"]) % x.dim()
    index: list[Any] = [slice(None)] * x.dim()
    if ctx.op == "select":
        index[dim] = int(args[2] if len(args) > 2 else kwargs["index"])
    else:
        start = int(args[2] if len(args) > 2 else kwargs["start"])
        length = int(args[3] if len(args) > 3 else kwargs["length"])
        index[dim] = slice(start, start + length)
    getitem(ctx, (x, tuple(index)), {}, out)


def _pad_labels(
    ctx: RuleContext, f: Factor, ndim: int, widths: list[int], mode: str
) -> Factor | None:
    """Constant padding adds positions without identity (-1); other modes copy channels."""
    labels = f.labels
    for k in range(len(widths) // 2):
        d = ndim - 1 - k
        before, after = widths[2 * k], widths[2 * k + 1]
        if d not in f.dims or not (before or after):
            continue
        if mode != "constant" or before < 0 or after < 0:
            ctx.block(f.labels, f"{mode} padding of the channel dimension")
            return None
        spec = [(0, 0)] * labels.ndim
        spec[f.dims.index(d)] = (before, after)
        labels = np.pad(labels, spec, constant_values=-1)
    return Factor(f.dims, labels)


@register_function_rule("pad")
def pad(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x = args[0]
    widths = list(args[1] if len(args) > 1 else kwargs["pad"])
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    o = output_tensor(out)
    factors = []
    for f in ctx.factors(x):
        padded = _pad_labels(ctx, f, x.dim(), widths, mode)
        if padded is not None:
            factors.append(padded)
    ctx.set(o, factors)
