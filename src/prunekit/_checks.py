"""Argument checks for the public Python API: a wrong type or value becomes a ``PrunekitError``
that names the argument, what it got and what to pass, instead of a bare ``AttributeError``
three frames deep."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prunekit.errors import BackendError, InvalidArgumentError, InvalidValueError

if TYPE_CHECKING:
    import torch


def got(value: Any) -> str:
    """What was passed, in a few words on one line: the value of a plain scalar or string, the
    type and size of a container, the type of anything else."""
    kind = type(value).__name__
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        text = repr(value)
        return f"{kind} {text[:40] + '...' if len(text) > 40 else text}"
    if isinstance(value, (list, tuple, dict, set)):
        return f"a {kind} of {len(value)} items"
    return f"a {kind}"


def check_type(
    value: Any,
    types: type | tuple[type, ...],
    name: str,
    expected: str,
    *,
    error: type[InvalidArgumentError] = InvalidArgumentError,
) -> None:
    """``value`` must be an instance of ``types`` (booleans are not numbers here).

    ``error``: a subclass of ``InvalidArgumentError`` to raise instead (one that is also a
    module's own ``PrunekitError``, so that code catching that keeps working)."""
    kinds = (int, float)
    wants_number = (types in kinds) or (isinstance(types, tuple) and set(types) <= set(kinds))
    if not isinstance(value, types) or (wants_number and isinstance(value, bool)):
        raise error(f"{name} must be {expected}, got {got(value)}")


def check_module(value: Any, name: str = "model") -> None:
    from torch import nn

    if not isinstance(value, nn.Module):
        hint = (
            "; prunekit.load_model(...) returns a LoadedModel: pass its .model"
            if type(value).__name__ == "LoadedModel"
            else ""
        )
        raise InvalidArgumentError(f"{name} must be a torch.nn.Module, got {got(value)}{hint}")


def _is_number(value: Any, integer: bool) -> bool:
    kind = numbers.Integral if integer else numbers.Real
    return isinstance(value, kind) and not isinstance(value, bool)


def check_number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    type_error: type[InvalidArgumentError] = InvalidArgumentError,
    value_error: type[InvalidValueError] = InvalidValueError,
) -> float:
    """A finite number (an int when ``integer``) within the bounds; returns it.

    Any real number is accepted (numpy scalars included), booleans are not; ``type_error`` and
    ``value_error`` replace the classes raised (see ``check_type``)."""
    if not _is_number(value, integer):
        expected = "an integer" if integer else "a number"
        raise type_error(f"{name} must be {expected}, got {got(value)}")
    if not math.isfinite(value):
        raise value_error(f"{name} must be a finite number, got {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if (below or above) and integer and high is None and low == (0 if low_open else 1):
        raise value_error(f"{name} must be a positive integer, got {value!r}")
    if (below or above) and high is None and low is not None:
        raise value_error(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if below or above:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        span = f"{left}{lo}, {hi}{right}"
        raise value_error(f"{name} must lie in {span}, got {value!r}")
    return value


def check_optional(value: Any, types: type | tuple[type, ...], name: str, expected: str) -> None:
    """``check_type`` that lets None through (the message says None is allowed)."""
    if value is not None:
        check_type(value, types, name, f"{expected} or None")


def check_callable(value: Any, name: str, expected: str, *, optional: bool = False) -> None:
    """``value`` must be callable (or None when ``optional``)."""
    if optional and value is None:
        return
    if not callable(value) or isinstance(value, type):
        raise InvalidArgumentError(
            f"{name} must be {expected}{' or None' if optional else ''}, got {got(value)}"
        )


def check_mapping(value: Any, name: str, expected: str, *, optional: bool = True) -> None:
    """``value`` must be a mapping (a dict), or None when ``optional``."""
    if optional and value is None:
        return
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(
            f"{name} must be {expected}{' or None' if optional else ''}, got {got(value)}"
        )


def check_sequence(
    value: Any,
    name: str,
    expected: str,
    *,
    items: type | tuple[type, ...] | None = None,
    optional: bool = False,
    error: type[InvalidArgumentError] = InvalidArgumentError,
) -> None:
    """``value`` must be a list-like collection (a list, a tuple, a numpy array ...; not a
    string, a mapping or a tensor, which are easy to pass by mistake and iterate into
    something else) whose items, if ``items`` is given, are instances of it (booleans are not
    numbers here). None passes when ``optional``."""
    import torch

    if optional and value is None:
        return
    if (
        isinstance(value, (str, bytes, Mapping, torch.Tensor))
        or not hasattr(value, "__len__")
        or not hasattr(value, "__iter__")
    ):
        raise error(f"{name} must be {expected}, got {got(value)}")
    if items is None:
        return
    kinds = items if isinstance(items, tuple) else (items,)
    wants_number = all(issubclass(k, numbers.Number) for k in kinds)
    for i, item in enumerate(value):
        if not isinstance(item, items) or (wants_number and isinstance(item, bool)):
            raise error(f"{name} must be {expected}, got {got(item)} at position {i}")


def check_device(value: Any, name: str = "device") -> torch.device:
    """A device name (``"cpu"``, ``"cuda:0"``), index or ``torch.device``; returns the device."""
    import torch

    if isinstance(value, torch.device):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidArgumentError(
            f"{name} must be a device name such as 'cpu' or 'cuda:0' (or a torch.device), "
            f"got {got(value)}"
        )
    try:
        return torch.device(value)
    except (RuntimeError, ValueError):
        raise InvalidValueError(
            f"{name} {value!r} is not a device: use one such as 'cpu', 'cuda' or 'cuda:0'"
        ) from None


def check_device_present(value: Any, name: str = "--device") -> torch.device:
    """``check_device``, and the device must exist on this machine: a CUDA device asked for
    where there is none is refused in one line before anything is loaded or trained."""
    import torch

    device = check_device(value, name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendError(f"{name} {value}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BackendError(f"{name} {value}: this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)")  # fmt: skip
    return device
