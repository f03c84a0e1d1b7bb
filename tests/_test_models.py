"""Model builders importable by name (``_test_models:NAME``) for artifact round trips."""

from __future__ import annotations

import torch
from torch import nn


class SelfAttentionNet(nn.Module):
    """nn.MultiheadAttention inside a residual block, as user code writes it."""

    def __init__(self, dim: int = 32, heads: int = 4, batch_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=batch_first)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 3)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.norm(h + a)
        h = h + self.mlp(h)
        if not self.batch_first:
            h = h.transpose(0, 1)
        return self.head(h.mean(1))


def mha_batch_first() -> nn.Module:
    return SelfAttentionNet(batch_first=True)


def mha_seq_first() -> nn.Module:
    return SelfAttentionNet(batch_first=False)
