"""``nn.MultiheadAttention`` whose attention width may differ from its embedding width.

PyTorch's implementation derives the head size from the *input* width
(``head_dim = embed_dim // num_heads``), so removing heads (or input channels) breaks it.
``PrunedMultiheadAttention`` keeps the same parameters, state-dict keys and call signature,
and takes the attention width from its projection weights: ``heads * head_dim`` rows of
``in_proj_weight`` per q/k/v, any ``embed_dim`` columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _merge_masks(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    batch: int,
    heads: int,
    length: int,
    source: int,
    dtype: torch.dtype,
) -> Tensor | None:
    """One additive float mask [N, H, L, S] from PyTorch's two mask conventions."""

    def additive(mask: Tensor) -> Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                mask, float("-inf")
            )
        return mask.to(dtype)

    merged = None
    if attn_mask is not None:
        m = additive(attn_mask)
        m = m.view(1, 1, length, source) if m.dim() == 2 else m.view(batch, heads, length, source)
        merged = m
    if key_padding_mask is not None:
        k = additive(key_padding_mask).view(batch, 1, 1, source)
        merged = k if merged is None else merged + k
    return merged


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """Drop-in replacement set by prunekit's surgery; ``head_dim`` is a fixed attribute."""

    head_dim: int

    def _projections(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.chunk(3)
            return wq, wk, wv
        return self.q_proj_weight, self.k_proj_weight, self.v_proj_weight

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:  # work batch-first: [N, L, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        wq, wk, wv = self._projections()
        bq = bk = bv = None
        if self.in_proj_bias is not None:
            bq, bk, bv = self.in_proj_bias.chunk(3)
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        n, length, inner = q.shape
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.reshape(1, 1, -1).expand(n, 1, inner)], dim=1)
            v = torch.cat([v, self.bias_v.reshape(1, 1, -1).expand(n, 1, inner)], dim=1)
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = (
                F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
            )
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(n, 1, inner)], dim=1)
            v = torch.cat([v, v.new_zeros(n, 1, inner)], dim=1)
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = (
                F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
            )
        heads, hd = self.num_heads, self.head_dim
        source = k.shape[1]
        q = q.view(n, length, heads, hd).transpose(1, 2)
        k = k.view(n, source, heads, hd).transpose(1, 2)
        v = v.view(n, source, heads, hd).transpose(1, 2)
        mask = _merge_masks(attn_mask, key_padding_mask, n, heads, length, source, q.dtype)
        causal = is_causal and mask is None
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * hd**-0.5) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            elif causal:
                scores = scores.masked_fill(
                    torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1),
                    float("-inf"),
                )
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p=dropout) @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal
            )
        out = F.linear(
            out.transpose(1, 2).reshape(n, length, heads * hd),
            self.out_proj.weight,
            self.out_proj.bias,
        )
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights
