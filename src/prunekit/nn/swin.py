"""torchvision's Swin window attention, with the head size taken from the weights.

torchvision computes the head size as ``input_width // num_heads``, which is wrong as soon as
heads or input channels are removed. These subclasses keep the parameters, buffers and
state-dict keys of ``ShiftedWindowAttention`` / ``ShiftedWindowAttentionV2`` and compute
window attention (Liu et al., *Swin Transformer*, ICCV 2021; V2: cosine attention with a
learned logit scale, CVPR 2022) with ``head_dim = qkv rows / 3 / num_heads`` and an output
width from the projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

_MASKED = -100.0  # the additive mask value of the reference implementation (kept for parity)


def _partition(x: Tensor, window: list[int]) -> Tensor:
    """[B, H, W, C] -> [B * windows, wh * ww, C]."""
    b, h, w, c = x.shape
    x = x.view(b, h // window[0], window[0], w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def _merge(x: Tensor, window: list[int], b: int, h: int, w: int) -> Tensor:
    """Inverse of ``_partition``."""
    c = x.shape[-1]
    x = x.view(b, h // window[0], w // window[1], window[0], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def _shift_mask(h: int, w: int, window: list[int], shift: list[int], like: Tensor) -> Tensor:
    """[windows, N, N]: -100 between tokens that came from different regions after the roll."""
    regions = like.new_zeros((h, w))
    bounds_h = ((0, h - window[0]), (h - window[0], h - shift[0]), (h - shift[0], h))
    bounds_w = ((0, w - window[1]), (w - window[1], w - shift[1]), (w - shift[1], w))
    region = 0
    for h0, h1 in bounds_h:
        for w0, w1 in bounds_w:
            regions[h0:h1, w0:w1] = region
            region += 1
    ids = _partition(regions[None, :, :, None], window).squeeze(-1)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return diff.masked_fill(diff != 0, _MASKED).masked_fill(diff == 0, 0.0)


def window_attention(
    x: Tensor,
    module: ShiftedWindowAttention,
    bias: Tensor,
    logit_scale: Tensor | None = None,
) -> Tensor:
    b, h, w, _ = x.shape
    window = list(module.window_size)
    pad_w = (window[1] - w % window[1]) % window[1]
    pad_h = (window[0] - h % window[0]) % window[0]
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    ph, pw = x.shape[1], x.shape[2]
    shift = [
        0 if window[0] >= ph else module.shift_size[0],
        0 if window[1] >= pw else module.shift_size[1],
    ]
    if sum(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    tokens = _partition(x, window)
    qkv_bias = module.qkv.bias
    if logit_scale is not None and qkv_bias is not None:  # V2 has no key bias
        third = qkv_bias.numel() // 3
        qkv_bias = torch.cat(
            [qkv_bias[:third], torch.zeros_like(qkv_bias[third : 2 * third]), qkv_bias[2 * third :]]
        )
    heads = module.num_heads
    inner = module.qkv.weight.shape[0] // 3
    head_dim = inner // heads
    n, length = tokens.shape[0], tokens.shape[1]
    qkv = F.linear(tokens, module.qkv.weight, qkv_bias)
    q, k, v = qkv.reshape(n, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * head_dim**-0.5) @ k.transpose(-2, -1)
    attn = attn + bias
    if sum(shift):
        mask = _shift_mask(ph, pw, window, shift, x)
        windows = mask.shape[0]
        attn = (attn.view(-1, windows, heads, length, length) + mask[None, :, None]).view(
            -1, heads, length, length
        )
    attn = F.dropout(attn.softmax(dim=-1), p=module.attention_dropout, training=module.training)
    out = (attn @ v).transpose(1, 2).reshape(n, length, inner)
    out = F.dropout(
        F.linear(out, module.proj.weight, module.proj.bias),
        p=module.dropout,
        training=module.training,
    )
    out = _merge(out, window, b, ph, pw)
    if sum(shift):
        out = torch.roll(out, shifts=(shift[0], shift[1]), dims=(1, 2))
    return out[:, :h, :w, :].contiguous()


class PrunedShiftedWindowAttention(ShiftedWindowAttention):
    def forward(self, x: Tensor) -> Tensor:
        return window_attention(x, self, self.get_relative_position_bias())


class PrunedShiftedWindowAttentionV2(ShiftedWindowAttentionV2):
    def forward(self, x: Tensor) -> Tensor:
        return window_attention(x, self, self.get_relative_position_bias(), self.logit_scale)
