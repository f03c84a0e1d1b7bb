"""Small helpers shared across subpackages."""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn


def module_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    for tensor in chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def describe_exception(exc: BaseException) -> str:
    """``"TypeError: first line of the message"``: enough to act on, short enough for one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else '(no message)'}"
