"""Drop-in module subclasses that prunekit swaps in where the original code cannot be pruned.

Each keeps its parent's parameters, buffers, state-dict keys and call signature; only the
forward changes, so that sizes come from the weights rather than from fixed attributes.
"""

from prunekit.nn.attention import PrunedMultiheadAttention
from prunekit.nn.swin import PrunedShiftedWindowAttention, PrunedShiftedWindowAttentionV2

__all__ = [
    "PrunedMultiheadAttention",
    "PrunedShiftedWindowAttention",
    "PrunedShiftedWindowAttentionV2",
]
