"""Drop-in module subclasses that prunekit swaps in where the original code cannot be pruned.

Each keeps its parent's parameters, buffers, state-dict keys and call signature; only the
forward changes, so that sizes come from the weights rather than from fixed attributes.

Also small task models to benchmark on: ``UNet`` / ``unet`` (segmentation, ``prunekit.nn.unet``)
and the perception models of ``prunekit.nn.perception``.
"""

from prunekit.nn.attention import PrunedMultiheadAttention
from prunekit.nn.swin import PrunedShiftedWindowAttention, PrunedShiftedWindowAttentionV2
from prunekit.nn.unet import UNet, unet

__all__ = [
    "PrunedMultiheadAttention",
    "PrunedShiftedWindowAttention",
    "PrunedShiftedWindowAttentionV2",
    "UNet",
    "unet",
]
