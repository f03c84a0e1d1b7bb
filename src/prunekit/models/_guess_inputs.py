"""A best guess at the input of a model we know nothing about, from its first layer.

Used for user models (``module:callable``): the first conv / linear / embedding layer in
definition order tells the channel count or feature size (and whether inputs are token ids).
The guess is always announced, and a forward pass that fails on it tells the user to pass
``--input-shape`` explicitly.
"""

from __future__ import annotations

from torch import nn

from prunekit.errors import ModelForwardError
from prunekit.inputs import TensorSpec

_IMAGE_SIDE = 224
_SEQUENCE = 128
_FIRST_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding)


def _first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    for name, module in model.named_modules():
        if isinstance(module, _FIRST_LAYERS):
            return name, module
    return None


def input_spec_for(
    model: nn.Module, shapes: list[tuple[int, ...]] | None
) -> tuple[TensorSpec, str]:
    """The user's shapes if given (token ids if the model starts with an embedding), else a guess."""
    first = _first_layer(model)
    vocab = first[1].num_embeddings if first and isinstance(first[1], nn.Embedding) else None
    if shapes:
        return TensorSpec(tuple(shapes), integer_high=vocab), "from --input-shape"
    if first is None:
        raise ModelForwardError(
            f"cannot guess the input of {type(model).__name__}: it has no conv, linear or "
            "embedding layer; pass --input-shape (e.g. --input-shape 1,3,224,224)"
        )
    name, module = first
    if isinstance(module, nn.Conv2d):
        shape: tuple[int, ...] = (1, module.in_channels, _IMAGE_SIDE, _IMAGE_SIDE)
    elif isinstance(module, nn.Conv1d):
        shape = (1, module.in_channels, _SEQUENCE)
    elif isinstance(module, nn.Conv3d):
        shape = (1, module.in_channels, 16, 112, 112)
    elif isinstance(module, nn.Linear):
        shape = (1, module.in_features)
    else:
        shape = (1, _SEQUENCE)
    note = (
        f"{'x'.join(map(str, shape))}, guessed from the first layer "
        f"{name} ({type(module).__name__}); pass --input-shape to override"
    )
    return TensorSpec((shape,), integer_high=vocab), note
