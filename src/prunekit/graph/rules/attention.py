"""Attention implementations whose code ties the number of heads to other sizes.

``nn.MultiheadAttention`` runs as one call (``F.multi_head_attention_forward``) and
torchvision's Swin attention computes the head size from the *input* width; neither can be
traced op by op into something that stays valid after pruning. These rules describe them
whole: the input channels are read by the q/k/v projection, each head (its q, k and v rows,
its output-projection columns, its relative-position bias) is one atom, and the output
channels are the output projection's rows. Surgery swaps in prunekit's drop-in subclasses
(``prunekit.nn``), whose forward takes the head size from the weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

from prunekit.graph._context import RuleContext, tensors_in
from prunekit.graph._labels import Factor
from prunekit.graph._registry import register_function_rule, register_module_rule
from prunekit.graph.rules.contract import (
    _arg,
    _union_rows,
    contract_input,
    dim_labels,
    labels_along,
)
from prunekit.nn import (
    PrunedMultiheadAttention,
    PrunedShiftedWindowAttention,
    PrunedShiftedWindowAttentionV2,
)


def couple_heads(ctx: RuleContext, pieces: list[np.ndarray], heads: int) -> np.ndarray:
    """Each piece is [heads * k] (head-major); couple everything of a head, return head labels."""
    rows = np.concatenate([p.reshape(heads, -1) for p in pieces], axis=1)
    return _union_rows(ctx, rows)


def _output(
    ctx: RuleContext, o: torch.Tensor, out_rows: np.ndarray, bias: torch.Tensor | None
) -> None:
    if bias is not None:
        ctx.union(out_rows, labels_along(ctx, bias, 0, out_rows.size), "bias")
    ctx.set(o, [Factor((o.dim() - 1,), out_rows)] if np.any(out_rows >= 0) else [])


def _block_inputs(ctx: RuleContext, tensors: list[Any], detail: str) -> None:
    ctx.block_tensors([t for t in tensors if isinstance(t, torch.Tensor)], detail)


_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
             "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight",
             "out_proj_bias", "training", "key_padding_mask", "need_weights", "attn_mask",
             "use_separate_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
             "static_k", "static_v", "average_attn_weights")  # fmt: skip


@register_function_rule("multi_head_attention_forward")
def multi_head_attention(
    ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> None:
    _mha(ctx, {n: _arg(args, kwargs, i, n) for i, n in enumerate(_MHA_ARGS)}, out)


@register_module_rule(PrunedMultiheadAttention)
def pruned_mha(
    ctx: RuleContext, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> None:
    call = dict(
        zip(
            (
                "query",
                "key",
                "value",
                "key_padding_mask",
                "need_weights",
                "attn_mask",
                "average_attn_weights",
            ),
            args,
            strict=False,
        )
    )
    call.update(kwargs)
    a = {
        **call,
        "num_heads": module.num_heads,
        "in_proj_weight": module.in_proj_weight,
        "in_proj_bias": module.in_proj_bias,
        "bias_k": module.bias_k,
        "bias_v": module.bias_v,
        "out_proj_weight": module.out_proj.weight,
        "out_proj_bias": module.out_proj.bias,
        "use_separate_proj_weight": not module._qkv_same_embed_dim,
        "q_proj_weight": module.q_proj_weight,
        "k_proj_weight": module.k_proj_weight,
        "v_proj_weight": module.v_proj_weight,
        "average_attn_weights": call.get("average_attn_weights", True),
    }
    _mha(ctx, a, out)


def _mha(ctx: RuleContext, a: dict[str, Any], out: Any) -> None:
    if a.get("static_k") is not None or a.get("static_v") is not None:
        _block_inputs(ctx, list(tensors_in(a)), "static keys/values")
        return
    _block_inputs(
        ctx, [a.get("key_padding_mask"), a.get("attn_mask")], "attention mask with channel identity"
    )
    heads = int(a["num_heads"])
    if a["use_separate_proj_weight"]:
        projections = [a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"]]
        for x, w in zip((a["query"], a["key"], a["value"]), projections, strict=True):
            contract_input(ctx, x, x.dim() - 1, dim_labels(ctx, w, 1))
        inner = projections[0].shape[0]
        rows = [labels_along(ctx, w, 0, inner) for w in projections]
    else:
        w = a["in_proj_weight"]
        w_in = dim_labels(ctx, w, 1)
        for x in {id(t): t for t in (a["query"], a["key"], a["value"])}.values():
            contract_input(ctx, x, x.dim() - 1, w_in)
        inner = w.shape[0] // 3
        rows = list(labels_along(ctx, w, 0, 3 * inner).reshape(3, inner))
    bias = a["in_proj_bias"]
    bias_rows = (
        list(labels_along(ctx, bias, 0, 3 * inner).reshape(3, inner)) if bias is not None else []
    )
    extra = [
        labels_along(ctx, b, b.dim() - 1, inner)
        for b in (a["bias_k"], a["bias_v"])
        if b is not None
    ]
    out_w = a["out_proj_weight"]
    out_cols = labels_along(ctx, out_w, 1, inner)
    ctx.space.mark_consumer(out_cols)
    head_labels = couple_heads(ctx, [*rows, *bias_rows, *extra, out_cols], heads)
    outputs = list(tensors_in(out))
    _output(ctx, outputs[0], labels_along(ctx, out_w, 0, out_w.shape[0]), a["out_proj_bias"])
    if len(outputs) > 1:  # attention weights: [N, H, L, S] per head, or averaged over heads
        weights = outputs[1]
        if a.get("average_attn_weights", True):
            ctx.mix(head_labels, "attention weights averaged over heads")
        else:
            ctx.set(weights, [Factor((weights.dim() - 3,), head_labels)])


def _swin(
    ctx: RuleContext, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> None:
    x = args[0] if args else kwargs["x"]
    qkv, proj = module.qkv, module.proj
    heads = int(module.num_heads)
    inner = qkv.weight.shape[0] // 3
    contract_input(ctx, x, x.dim() - 1, dim_labels(ctx, qkv.weight, 1))
    pieces = list(labels_along(ctx, qkv.weight, 0, 3 * inner).reshape(3, inner))
    if qkv.bias is not None:
        pieces += list(labels_along(ctx, qkv.bias, 0, 3 * inner).reshape(3, inner))
    out_cols = labels_along(ctx, proj.weight, 1, inner)
    ctx.space.mark_consumer(out_cols)
    pieces.append(out_cols)
    if hasattr(module, "logit_scale"):
        pieces.append(labels_along(ctx, module.cpb_mlp[2].weight, 0, heads))
        pieces.append(labels_along(ctx, module.logit_scale, 0, heads))
        ctx.block_tensors([module.cpb_mlp[0].weight, module.cpb_mlp[0].bias], "position-bias MLP")
        ctx.block(
            labels_along(ctx, module.cpb_mlp[2].weight, 1, module.cpb_mlp[2].weight.shape[1]),
            "position-bias MLP",
        )
    else:
        table = module.relative_position_bias_table
        pieces.append(labels_along(ctx, table, 1, heads))
        ctx.block(labels_along(ctx, table, 0, table.shape[0]), "relative positions")
    couple_heads(ctx, pieces, heads)
    _output(ctx, out, labels_along(ctx, proj.weight, 0, proj.weight.shape[0]), proj.bias)


for _cls in (
    ShiftedWindowAttention,
    ShiftedWindowAttentionV2,
    PrunedShiftedWindowAttention,
    PrunedShiftedWindowAttentionV2,
):
    register_module_rule(_cls)(_swin)
