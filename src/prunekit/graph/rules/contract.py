"""Operations that contract a channel dimension: linear, convolution, matmul, attention.

A weight that reads channels (a conv's input slice, a linear layer's column) is coupled to
the channel it reads and marked as a *consumer*: zeroing it makes the channel dead. The
output channels of a weight are its rows: they become the labels of the output.

Between two activations (``q @ k^T``, ``attn @ v``) there are no weights: all channels that
meet under the same batch index (an attention head) are coupled, so attention heads are
removed whole; a contraction of channels with no labelled batch dimension cannot keep the
function unchanged when a channel goes, so it is marked mixing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from prunekit.graph._context import RuleContext
from prunekit.graph._labels import Factor
from prunekit.graph._registry import register_function_rule
from prunekit.graph.rules.elementwise import output_tensor


def dim_labels(ctx: RuleContext, t: torch.Tensor | None, dim: int) -> np.ndarray | None:
    """Labels of ``t`` along ``dim`` if they live on that dimension alone, else None."""
    if t is None:
        return None
    dim %= t.dim()
    for f in ctx.factors(t):
        if f.dims == (dim,):
            return f.labels
        if dim in f.dims:
            ctx.block(f.labels, "weight channels tied across dimensions")
    return None


def labels_along(ctx: RuleContext, t: torch.Tensor | None, dim: int, size: int) -> np.ndarray:
    """``dim_labels``, or all -1 (no identity) when ``t`` is absent, a scalar or unlabelled."""
    labels = dim_labels(ctx, t, dim) if t is not None and t.numel() > 1 else None
    return labels if labels is not None else np.full(size, -1, dtype=np.int64)


def join_bias(ctx: RuleContext, out_labels: np.ndarray, bias: torch.Tensor | None) -> None:
    """A bias entry goes with the output channel it is added to."""
    if bias is not None:
        ctx.union(out_labels, labels_along(ctx, bias, 0, out_labels.size), "bias")


def _arg(
    args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str, default: Any = None
) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def contract_input(
    ctx: RuleContext, x: torch.Tensor, dim: int, weight_labels: np.ndarray | None
) -> list[Factor]:
    """Couple ``x``'s channels along ``dim`` with the weight slices that read them.

    Returns ``x``'s factors that do not touch ``dim`` (they pass through to the output).
    """
    size = x.shape[dim]
    w = weight_labels if weight_labels is not None else np.full(size, -1, dtype=np.int64)
    passed, covered = [], False
    for f in ctx.factors(x):
        if dim not in f.dims:
            passed.append(f)
            continue
        covered = True
        rows = np.moveaxis(f.labels, f.dims.index(dim), -1).reshape(-1, size)
        ctx.union(rows, np.broadcast_to(w, rows.shape), "channels read by a weight")
    if not covered:
        ctx.union(np.full(size, -1, dtype=np.int64), w, "weight reads channels without identity")
    elif weight_labels is not None:
        ctx.space.mark_consumer(weight_labels)
    return passed


def _ignore_extra_dims(ctx: RuleContext, w: torch.Tensor, keep: tuple[int, ...]) -> None:
    """Kernel height/width of a conv, vocabulary rows of an embedding: never channels."""
    for f in ctx.factors(w):
        if not set(f.dims) & set(keep):
            ctx.space.ignore(f.labels)


@register_function_rule("linear")
def linear(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    o = output_tensor(out)
    w_out, w_in = dim_labels(ctx, w, 0), dim_labels(ctx, w, 1)
    passed = contract_input(ctx, x, x.dim() - 1, w_in)
    if w_out is not None:
        join_bias(ctx, w_out, b)
    shift = o.dim() - x.dim()
    factors = [Factor(tuple(d + shift for d in f.dims), f.labels) for f in passed]
    if w_out is not None:
        factors.append(Factor((o.dim() - 1,), w_out))
    ctx.set(o, factors)


@register_function_rule(
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"
)
def conv(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    groups = int(_arg(args, kwargs, 6, "groups", 1))
    o = output_tensor(out)
    cdim = x.dim() - (w.dim() - 2) - 1
    transposed = ctx.op.startswith("conv_transpose")
    w_in, w_out = (
        (dim_labels(ctx, w, 0), dim_labels(ctx, w, 1))
        if transposed
        else (dim_labels(ctx, w, 1), dim_labels(ctx, w, 0))
    )
    _ignore_extra_dims(ctx, w, (0, 1))
    for f in ctx.factors(x):
        if f.dims != (cdim,):
            ctx.block(f.labels, "channels mixed with spatial positions")
    cin, cout = x.shape[cdim], o.shape[cdim]
    x_lab = dim_labels(ctx, x, cdim)
    x_lab = x_lab if x_lab is not None else np.full(cin, -1, dtype=np.int64)
    if groups == 1:
        ctx.union(
            x_lab, w_in if w_in is not None else np.full(cin, -1), "channels read by a weight"
        )
        if w_in is not None:
            ctx.space.mark_consumer(w_in)
        out_lab = w_out
    elif transposed:
        ctx.block(x_lab, "grouped transposed convolution")
        if w_out is not None:
            ctx.block(w_out, "grouped transposed convolution")
        out_lab = None
    elif cin == groups:  # depthwise: output channel o reads input channel o // multiplier
        out_lab = w_out if w_out is not None else np.full(cout, -1, dtype=np.int64)
        ctx.union(np.repeat(x_lab, cout // cin), out_lab, "depthwise convolution")
    else:  # grouped: remove the same offset in every group so that groups stay equal
        per_in = x_lab.reshape(groups, cin // groups)
        ctx.union(per_in[:1].repeat(groups - 1, axis=0), per_in[1:], "grouped convolution")
        ctx.union(
            per_in[0],
            w_in if w_in is not None else np.full(cin // groups, -1),
            "grouped convolution",
        )
        if w_in is not None:
            ctx.space.mark_consumer(w_in)
        out_lab = w_out
        if out_lab is not None:
            per_out = out_lab.reshape(groups, cout // groups)
            ctx.union(per_out[:1].repeat(groups - 1, axis=0), per_out[1:], "grouped convolution")
    if out_lab is not None:
        join_bias(ctx, out_lab, b)
    ctx.set(o, [Factor((cdim,), out_lab)] if out_lab is not None else [])


@register_function_rule("embedding")
def embedding(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    ids, w = args[0], _arg(args, kwargs, 1, "weight")
    ctx.block_tensors([ids], "channels used as token ids")
    _ignore_extra_dims(ctx, w, (1,))
    o = output_tensor(out)
    labels = dim_labels(ctx, w, 1)
    ctx.set(o, [Factor((o.dim() - 1,), labels)] if labels is not None else [])


def _union_rows(ctx: RuleContext, rows: np.ndarray) -> np.ndarray:
    """Couple all labelled entries of each row; returns one representative per row (-1 if none)."""
    has = rows >= 0
    first = np.where(has.any(axis=1), rows[np.arange(len(rows)), has.argmax(axis=1)], -1)
    pairs = np.broadcast_to(first[:, None], rows.shape)
    mask = has & (pairs >= 0)
    if mask.any():
        ctx.union(pairs[mask], rows[mask], "attention head")
    return first


def _batch_grid(ctx: RuleContext, t: torch.Tensor, batch: tuple[int, ...]) -> np.ndarray:
    """Labels of ``t`` ([..., X, Y]) as [prod(batch), X*Y], broadcasting its batch dims."""
    factors = ctx.factors(t)
    lead = t.dim() - 2
    shape = tuple(t.shape)
    grid = (
        np.ascontiguousarray(factors[0].grid(shape))
        if factors
        else np.full(shape, -1, dtype=np.int64)
    )
    full = np.broadcast_to(grid.reshape((1,) * (len(batch) - lead) + shape), (*batch, *shape[-2:]))
    return full.reshape(int(np.prod(batch)) if batch else 1, -1)


def activation_contraction(
    ctx: RuleContext, operands: list[torch.Tensor], o: torch.Tensor, out_labels_from: int
) -> None:
    """``o[..., i, j] = sum_k f(operands)`` over the last two dims; leading dims are batch.

    ``out_labels_from`` is the operand whose last dimension becomes ``o``'s last dimension.
    """
    batch = tuple(o.shape[:-2])
    nb = len(batch)
    for t in operands:
        if len(ctx.factors(t)) > 1:
            ctx.block_tensors(operands, "several channel layouts in an attention product")
            return
    batch_labelled = any(d < t.dim() - 2 for t in operands for f in ctx.factors(t) for d in f.dims)
    if batch_labelled:
        for t in operands:
            lead = t.dim() - 2
            if not ctx.factors(t) and any(t.shape[i] > 1 for i in range(lead)):
                ctx.block_tensors(operands, "heads meet an operand without head identity")
                return
        rows = np.concatenate([_batch_grid(ctx, t, batch) for t in operands], axis=1)
        reps = _union_rows(ctx, rows).reshape(batch)
        ctx.set(o, [Factor(tuple(range(nb)), reps)] if nb and np.any(reps >= 0) else [])
        return
    # no head dimension: channels contracted between activations change the result if removed
    contracted = [operands[0], operands[1]]
    k_a = dim_labels(ctx, contracted[0], -1)
    k_b = (
        dim_labels(ctx, contracted[1], -2)
        if ctx.op != "scaled_dot_product_attention"
        else dim_labels(ctx, contracted[1], -1)
    )
    if k_a is not None or k_b is not None:
        size = contracted[0].shape[-1]
        a = k_a if k_a is not None else np.full(size, -1, dtype=np.int64)
        b = k_b if k_b is not None else np.full(size, -1, dtype=np.int64)
        ctx.union(a, b, "channels contracted between activations")
        ctx.mix(np.concatenate([a, b]), "channels contracted between activations")
    src = operands[out_labels_from]
    n_lab = dim_labels(ctx, src, -1)
    factors = [Factor((o.dim() - 1,), n_lab)] if n_lab is not None else []
    m_lab = dim_labels(ctx, operands[0], -2)
    if m_lab is not None and ctx.op != "scaled_dot_product_attention":
        factors.append(Factor((o.dim() - 2,), m_lab))
    elif m_lab is not None:
        ctx.block(m_lab, "sequence positions with channel identity")
    ctx.set(o, factors)


@register_function_rule("matmul", "mm", "bmm", "rmatmul")
def matmul(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    a, b = (args[1], args[0]) if ctx.op == "rmatmul" else (args[0], args[1])
    o = output_tensor(out)
    if a.dim() < 2 or b.dim() < 2:
        ctx.block_tensors([a, b], "matrix-vector product")
        return
    a_param, b_param = ctx.is_param_derived(a), ctx.is_param_derived(b)
    if b_param and not a_param:  # x @ W: W's rows read x's channels, its columns are outputs
        if any(d < b.dim() - 2 for f in ctx.factors(b) for d in f.dims):
            ctx.block_tensors([a, b], "batched weight")
            return
        k, n = dim_labels(ctx, b, -2), dim_labels(ctx, b, -1)
        passed = contract_input(ctx, a, a.dim() - 1, k)
        shift = o.dim() - a.dim()
        factors = [Factor(tuple(d + shift for d in f.dims), f.labels) for f in passed]
        if n is not None:
            factors.append(Factor((o.dim() - 1,), n))
        ctx.set(o, factors)
    elif a_param and not b_param:  # W @ x: W's columns read x's rows
        if any(d < a.dim() - 2 for f in ctx.factors(a) for d in f.dims):
            ctx.block_tensors([a, b], "batched weight")
            return
        m, k = dim_labels(ctx, a, -2), dim_labels(ctx, a, -1)
        passed = contract_input(ctx, b, b.dim() - 2, k)
        shift = o.dim() - b.dim()
        factors = [Factor(tuple(d + shift for d in f.dims), f.labels) for f in passed]
        if m is not None:
            factors.append(Factor((o.dim() - 2,), m))
        ctx.set(o, factors)
    else:
        activation_contraction(ctx, [a, b], o, out_labels_from=1)


@register_function_rule("scaled_dot_product_attention")
def sdpa(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    q, k, v = args[0], _arg(args, kwargs, 1, "key"), _arg(args, kwargs, 2, "value")
    if kwargs.get("enable_gqa"):
        ctx.block_tensors([q, k, v], "grouped-query attention")
        return
    mask = _arg(args, kwargs, 3, "attn_mask")
    if mask is not None:
        ctx.block_tensors([mask], "attention mask with channel identity")
    activation_contraction(ctx, [q, k, v], output_tensor(out), out_labels_from=2)


def _parse_einsum(equation: str, ndims: list[int]) -> tuple[list[str], str] | None:
    eq = equation.replace(" ", "")
    if "..." in eq or "->" not in eq:
        return None
    lhs, rhs = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != len(ndims) or any(len(t) != n for t, n in zip(terms, ndims, strict=True)):
        return None
    return terms, rhs


@register_function_rule("einsum")
def einsum(ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    """Explicit-output einsum of activations, by the same logic as ``activation_contraction``."""
    equation = args[0]
    operands = list(
        args[1][0] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
    )
    o = output_tensor(out)
    parsed = _parse_einsum(equation, [t.dim() for t in operands])
    if parsed is None or any(len(ctx.factors(t)) > 1 for t in operands):
        ctx.block_tensors(operands, "einsum form not supported")
        return
    terms, rhs = parsed
    batch = [c for c in rhs if all(c in t for t in terms)]
    letter_of = {}
    for t, term in zip(operands, terms, strict=True):
        for f in ctx.factors(t):
            letter_of[id(t)] = [term[d] for d in f.dims]
    labelled = {c for letters in letter_of.values() for c in letters}
    if labelled & set(batch):
        sizes = {c: o.shape[rhs.index(c)] for c in batch}
        rows = []
        for t, term in zip(operands, terms, strict=True):
            factors = ctx.factors(t)
            grid = (
                np.ascontiguousarray(factors[0].grid(tuple(t.shape)))
                if factors
                else np.full(tuple(t.shape), -1)
            )
            order = [term.index(c) for c in batch] + [
                i for i, c in enumerate(term) if c not in batch
            ]
            moved = np.transpose(grid, order)
            rows.append(moved.reshape(int(np.prod([sizes[c] for c in batch])), -1))
        reps = _union_rows(ctx, np.concatenate(rows, axis=1)).reshape([sizes[c] for c in batch])
        positions = [rhs.index(c) for c in batch]
        ctx.set(o, [Factor(tuple(sorted(positions)), np.transpose(reps, np.argsort(positions)))])
        return
    if any(len(letters) != 1 for letters in letter_of.values()):
        ctx.block_tensors(operands, "einsum channels tied across dimensions")
        return
    factors = []
    contracted: dict[str, list[np.ndarray]] = {}
    for t, term in zip(operands, terms, strict=True):
        for f in ctx.factors(t):
            c = term[f.dims[0]]
            if c in rhs:
                factors.append(Factor((rhs.index(c),), f.labels))
            else:
                contracted.setdefault(c, []).append(f.labels)
    for c, labels in contracted.items():
        if len(labels) < sum(c in term for term in terms):
            ctx.block(labels[0], "channels contracted with unlabelled values")
            continue
        for other in labels[1:]:
            ctx.union(labels[0], other, "einsum contraction")
        ctx.mix(labels[0], "channels contracted between activations")
    ctx.set(o, factors)
