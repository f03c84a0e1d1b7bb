"""Small helpers shared across subpackages."""

from __future__ import annotations

import copy
import functools
import gc
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def _meta_twins() -> Callable[[Any], Any]:
    """A function giving each tensor one meta-device twin (a Parameter stays a Parameter), the
    same twin every time it is asked, so tensors shared between modules stay shared."""
    twins: dict[int, Any] = {}

    def twin(t: Any) -> Any:
        if t is None:
            return None
        if id(t) not in twins:
            meta = t.detach().to("meta")
            twins[id(t)] = (
                nn.Parameter(meta, requires_grad=t.requires_grad)
                if isinstance(t, nn.Parameter)
                else meta
            )
        return twins[id(t)]

    return twin


def meta_copy(model: nn.Module) -> nn.Module | None:
    """A structural copy of ``model`` whose parameters and buffers live on ``meta``.

    Modules are copied (their ``__dict__`` shallowly, so a sync or class swap on the copy never
    reaches the original), parameters and buffers are replaced by meta twins, and no weight
    data is copied: cheap even for models that fill the GPU. Other attributes are shared with
    the original, as nothing prunekit runs mutates them. Returns None for a module that cannot
    be copied this way.
    """
    copies: dict[int, nn.Module] = {}

    twin = _meta_twins()

    def clone(module: nn.Module) -> nn.Module:
        if id(module) in copies:  # a module shared by two parents stays shared
            return copies[id(module)]
        new = module.__class__.__new__(module.__class__)
        copies[id(module)] = new
        state = dict(module.__dict__)
        state["_parameters"] = {k: twin(v) for k, v in module._parameters.items()}
        state["_buffers"] = {k: twin(v) for k, v in module._buffers.items()}
        state["_modules"] = {
            k: clone(v) if v is not None else None for k, v in module._modules.items()
        }
        for key, value in state.items():
            if key.endswith("hooks") or key.startswith("_forward") or key.startswith("_backward"):
                state[key] = copy.copy(value)
        new.__dict__.update(state)
        return new

    try:
        return clone(model)
    except Exception as exc:
        log.debug("meta copy failed: %s", exc)
        return None


def without_gc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` with Python's cyclic garbage collector paused.

    Tracing allocates many short-lived objects right after the user built a large model; the
    collector then scans that whole model repeatedly (over 100 ms for a ResNet-18, more than
    the trace itself). Everything ``fn`` allocates is either returned or freed by reference
    counting, so pausing the collector changes timing only.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper


@contextmanager
def swapped_to_meta(model: nn.Module) -> Iterator[nn.Module]:
    """Run code on ``model`` with meta twins of its parameters and buffers, then put back
    everything exactly as it was.

    Cheaper than ``meta_copy`` (nothing is copied but the per-module attribute dicts), for a
    single shape-only forward pass. Every module's attribute dict is restored afterwards, so
    whatever the forward pass stored on a module (a cache, a flag) is undone too.
    """
    saved = []

    twin = _meta_twins()

    for module in model.modules():
        saved.append((module, dict(module.__dict__)))
        module.__dict__["_parameters"] = {k: twin(v) for k, v in module._parameters.items()}
        module.__dict__["_buffers"] = {k: twin(v) for k, v in module._buffers.items()}
    try:
        yield model
    finally:
        for module, state in saved:
            module.__dict__.clear()
            module.__dict__.update(state)
