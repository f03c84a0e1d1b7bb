"""``package.module:callable`` or ``path/to/file.py:callable``: the user's own model code."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from prunekit._utils import describe_exception
from prunekit.errors import ModelSourceError
from prunekit.models._guess_inputs import input_spec_for
from prunekit.models._loaded import LoadedModel


def looks_like_callable_spec(spec: str) -> bool:
    if ":" not in spec:
        return False
    left, _, right = spec.rpartition(":")
    # the part after ":" must be a Python name, which also rules out "C:\\models" paths
    return bool(left) and right.isidentifier()


def is_file_spec(left: str) -> bool:
    """Whether the part before ``:`` names a Python file rather than an importable module."""
    return left.endswith(".py") or "/" in left or "\\" in left


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ModelSourceError(f"no such file: {path}")
    name = f"prunekit_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelSourceError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModelSourceError(f"importing {path} raised {describe_exception(exc)}") from exc
    return module


def _import_module(dotted: str) -> ModuleType:
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        raise ModelSourceError(
            f"cannot import module {dotted!r}: {exc}. Is it installed, or on PYTHONPATH?"
        ) from exc
    except Exception as exc:
        raise ModelSourceError(
            f"importing module {dotted!r} raised {describe_exception(exc)}"
        ) from exc


def build(
    spec: str,
    *,
    input_shapes: list[tuple[int, ...]] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    left, _, attr = spec.rpartition(":")
    is_file = is_file_spec(left)
    module = _import_file(Path(left)) if is_file else _import_module(left)
    factory = getattr(module, attr, None)
    if factory is None:
        available = sorted(
            n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
        )
        raise ModelSourceError(
            f"{left!r} has no attribute {attr!r}; callables there: {', '.join(available) or 'none'}"
        )
    if isinstance(factory, nn.Module):
        model = factory
    elif callable(factory):
        try:
            model = factory(**(model_kwargs or {}))
        except Exception as exc:
            raise ModelSourceError(f"calling {spec} raised {describe_exception(exc)}") from exc
    else:
        raise ModelSourceError(f"{spec} is a {type(factory).__name__}, not a callable")
    if not isinstance(model, nn.Module):
        kind = "class" if inspect.isclass(factory) else "function"
        raise ModelSourceError(
            f"{spec} ({kind}) returned {type(model).__name__}, expected a torch.nn.Module"
        )
    model.eval()
    input_spec, note = input_spec_for(model, input_shapes)
    recipe: dict[str, Any] = {"kind": "callable", "spec": spec, "kwargs": model_kwargs or {}}
    if is_file:  # an artifact must find this very file again, wherever it is loaded from
        from prunekit.artifact._recipes import file_record

        recipe["file"] = file_record(Path(left))
    return LoadedModel(
        model=model,
        name=spec,
        source="callable",
        input_spec=input_spec,
        task="unknown",
        input_note=note,
        recipe=recipe,
    )
