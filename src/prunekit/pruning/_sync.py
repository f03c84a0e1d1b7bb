"""After slicing: make each module's attributes agree with its new tensor shapes.

One small function per module type, registered by type and open to users
(``register_sync(MyModule)``). Attributes are derived from the sliced weights, never from
other modules' attributes, so the order in which modules are synced does not matter.
Modules whose forward hard-codes a size that pruning changes get a prunekit subclass
(``prunekit.nn``) swapped in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2
from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer

from prunekit.nn import (
    PrunedMultiheadAttention,
    PrunedShiftedWindowAttention,
    PrunedShiftedWindowAttentionV2,
)

Sync = Callable[[nn.Module], None]
SYNCS: dict[type, Sync] = {}


def register_sync(module_type: type) -> Callable[[Sync], Sync]:
    def decorate(fn: Sync) -> Sync:
        SYNCS[module_type] = fn
        return fn

    return decorate


def _sync_for(cls: type) -> Sync | None:
    for base in cls.__mro__:
        fn = SYNCS.get(base)
        if fn is not None:
            return fn
    return None


def needs_sync(module: nn.Module) -> bool:
    """Whether ``sync_module`` would do anything (most containers need nothing)."""
    return _sync_for(type(module)) is not None or _looks_like_hf_attention(module)


def sync_module(module: nn.Module) -> None:
    fn = _sync_for(type(module))
    if fn is not None:
        fn(module)
    _sync_hf_attention(module)


@register_sync(nn.modules.conv._ConvNd)
def _conv(m: Any) -> None:
    w = m.weight
    if m.transposed:
        m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
    elif m.groups > 1 and m.groups == m.in_channels:  # depthwise: groups follow the channels
        multiplier = m.out_channels // m.in_channels
        m.out_channels = w.shape[0]
        m.in_channels = m.groups = w.shape[0] // multiplier
    else:
        m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups


@register_sync(nn.Linear)
def _linear(m: Any) -> None:
    m.out_features, m.in_features = m.weight.shape


@register_sync(nn.modules.batchnorm._NormBase)
def _batch_norm(m: Any) -> None:
    source = m.weight if m.weight is not None else m.running_mean
    if source is not None:
        m.num_features = source.shape[0]


@register_sync(nn.LayerNorm)
def _layer_norm(m: Any) -> None:
    if m.weight is not None and len(m.normalized_shape) == 1:
        m.normalized_shape = (m.weight.shape[0],)


@register_sync(nn.GroupNorm)
def _group_norm(m: Any) -> None:
    if m.weight is not None:
        m.num_channels = m.weight.shape[0]


@register_sync(nn.Embedding)
def _embedding(m: Any) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


@register_sync(nn.PReLU)
def _prelu(m: Any) -> None:
    m.num_parameters = m.weight.numel()


@register_sync(nn.MultiheadAttention)
def _mha(m: Any) -> None:
    head_dim = getattr(m, "head_dim", None) or m.embed_dim // m.num_heads
    weight = m.in_proj_weight if m._qkv_same_embed_dim else m.q_proj_weight
    inner = weight.shape[0] // (3 if m._qkv_same_embed_dim else 1)
    m.num_heads = inner // head_dim
    m.head_dim = head_dim
    m.embed_dim = weight.shape[1]
    if not m._qkv_same_embed_dim:
        m.kdim, m.vdim = m.k_proj_weight.shape[1], m.v_proj_weight.shape[1]
    else:
        m.kdim = m.vdim = m.embed_dim
    if type(m) is nn.MultiheadAttention:
        m.__class__ = PrunedMultiheadAttention


def _swin(m: Any) -> None:
    # the per-head tensors were sliced with the heads: they hold the new head count
    per_head = m.logit_scale if hasattr(m, "logit_scale") else m.relative_position_bias_table.T
    m.num_heads = per_head.shape[0]
    swaps = {
        ShiftedWindowAttention: PrunedShiftedWindowAttention,
        ShiftedWindowAttentionV2: PrunedShiftedWindowAttentionV2,
    }
    if type(m) in swaps:
        m.__class__ = swaps[type(m)]


register_sync(ShiftedWindowAttention)(_swin)


@register_sync(VisionTransformer)
def _vit(m: Any) -> None:
    m.hidden_dim = m.conv_proj.weight.shape[0]  # used by the forward's reshape of the patches


@register_sync(EncoderBlock)
def _vit_block(m: Any) -> None:
    m.num_heads = m.self_attention.num_heads


_HF_QUERY = ("query", "q_lin", "q_proj")


def _looks_like_hf_attention(m: nn.Module) -> bool:
    return isinstance(getattr(m, "attention_head_size", getattr(m, "head_dim", None)), int) and any(
        isinstance(getattr(m, n, None), nn.Linear) for n in _HF_QUERY
    )


def _sync_hf_attention(m: nn.Module) -> None:
    """Hugging Face self-attention modules (BERT, RoBERTa, DistilBERT, ViT, ...).

    They read the head size from ``attention_head_size`` (or ``head_dim``) and infer the head
    count in their forward; the head-count attributes are updated so that the module
    describes itself.
    """
    size = getattr(m, "attention_head_size", getattr(m, "head_dim", None))
    query = next(
        (getattr(m, n) for n in _HF_QUERY if isinstance(getattr(m, n, None), nn.Linear)), None
    )
    if not isinstance(size, int) or query is None:
        return
    heads = query.weight.shape[0] // size
    for attr in ("num_attention_heads", "n_heads", "num_heads"):
        if isinstance(getattr(m, attr, None), int):
            setattr(m, attr, heads)
    if isinstance(getattr(m, "all_head_size", None), int):
        m.all_head_size = heads * size
