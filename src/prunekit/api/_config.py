"""What every verb's config shares: frozen, checked when built, and a plain-dict round trip.

``to_dict`` gives JSON-able data (recorded in every output file, and the shape of a recipe's
step section); ``from_dict`` refuses unknown keys by name, so a typo in a recipe is an error
instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from prunekit.errors import InvalidValueError

C = TypeVar("C", bound="VerbConfig")


class ConfigError(InvalidValueError):
    """A verb's config holds an unknown key or a value out of range."""


class VerbConfig:
    """Mixin for the frozen dataclasses that configure the verbs."""

    def to_dict(self) -> dict[str, Any]:
        data = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, where: str = "") -> C:
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{where or cls.__name__}: expected a mapping of settings, got {data!r}"
            )
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = [k for k in data if k not in names]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), names, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                f"{where or cls.__name__}: unknown setting {', '.join(hints)}; known: "
                f"{', '.join(names)}"
            )
        kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key, value in data.items():
            _check_kind(value, kinds[key], f"{where or cls.__name__}: {key}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # a wrong type the config's checks did not expect
            raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def _check_kind(value: Any, kind: str, name: str) -> None:
    """What a recipe's plain data can get wrong before the config's own checks: a string
    for a switch (``"false"`` is true to ``bool``) or for a list (``"features.0"`` would
    become its characters)."""
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    optional = value is None and kind.endswith("| None")
    if kind.startswith("tuple") and not optional and not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a list, such as [a, b], got {value!r}")


def positive_int(value: Any, name: str, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        none = " (or None)" if optional else ""
        raise ConfigError(f"{name} must be a positive integer{none}, got {value!r}")


def number(
    value: Any, name: str, *, low: float, high: float = math.inf, strict: bool = False,
    optional: bool = False,
) -> None:  # fmt: skip
    if optional and value is None:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = (value > low if strict else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if strict else f">= {low}"
        limit = "" if high == math.inf else f" and <= {high}"
        raise ConfigError(f"{name} must be a number {bound}{limit}, got {value!r}")


def choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
