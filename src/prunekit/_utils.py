"""Small helpers shared across subpackages."""

from __future__ import annotations

import copy
import logging
from itertools import chain
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def module_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    for tensor in chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def describe_exception(exc: BaseException) -> str:
    """``"TypeError: first line of the message"``: enough to act on, short enough for one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else '(no message)'}"


def meta_copy(model: nn.Module) -> nn.Module | None:
    """A structural copy of ``model`` whose parameters and buffers live on ``meta``.

    Pre-seeding deepcopy's memo with meta twins of every parameter and buffer means no weight
    data is ever copied, so this is cheap even for models that fill the GPU. Returns None for
    a model that cannot be deep-copied.
    """
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b.detach().to("meta")
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:
        log.debug("meta copy failed: %s", exc)
        return None
