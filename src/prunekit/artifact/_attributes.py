"""Module attributes as data: what surgery changed, recorded so that loading can redo it."""

from __future__ import annotations

from typing import Any

from torch import nn

SKIP = frozenset({"training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"})


def is_simple(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (tuple, list)):
        return all(is_simple(v) for v in value)
    return False


def encode(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    return value


def decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"tuple"}:
        return tuple(decode(v) for v in value["tuple"])
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def simple_attributes(module: nn.Module) -> dict[str, Any]:
    return {
        k: v for k, v in vars(module).items() if k not in SKIP and "hook" not in k and is_simple(v)
    }


def class_path(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}:{cls.__qualname__}"


def diff_modules(
    original: nn.Module, pruned: nn.Module
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Attributes and classes of ``pruned`` that differ from ``original`` (same structure)."""
    before = dict(original.named_modules())
    attributes: dict[str, dict[str, Any]] = {}
    classes: dict[str, str] = {}
    for name, module in pruned.named_modules():
        old = before.get(name)
        if old is None:
            continue
        if type(old) is not type(module):
            classes[name] = class_path(module)
        old_attrs = simple_attributes(old)
        changed = {
            k: encode(v)
            for k, v in simple_attributes(module).items()
            if old_attrs.get(k, object()) != v
        }
        if changed:
            attributes[name] = changed
    return attributes, classes
