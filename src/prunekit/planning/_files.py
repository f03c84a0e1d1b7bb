"""JSON files of the planning workflow: clear read errors, header checks.

They are written by ``prunekit._outputs.write_json_atomic``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prunekit._files import read_json as read_json_file
from prunekit.planning.fingerprint import PlanningFileError


def read_json(path: Path, what: str) -> Any:
    return read_json_file(path, PlanningFileError, f"{what} ")


def check_header(data: Mapping[str, Any], kind: str, version: int, what: str, source: str) -> None:
    """``data`` must be a ``kind`` file of ``version`` (``what`` names it in the error)."""
    if not isinstance(data, Mapping) or data.get("format") != kind:
        raise PlanningFileError(f"{source} is not a prunekit {what} file")
    if data.get("version") != version:
        raise PlanningFileError(
            f"{source} has version {data.get('version')!r}; this prunekit reads {version}"
        )


def whole(value: Any, what: str, low: int = 0) -> int:
    """A file's integer field (not a bool, not 12.5 quietly made 12), at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PlanningFileError(f"{what} must be an integer >= {low}, got {value!r}")
    return value


def finite(value: Any, what: str) -> float:
    """A file's number field: finite (a NaN drop would be written on into every plan)."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlanningFileError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def names(value: Any, what: str) -> list[str]:
    """A file's list of names (a string would be read letter by letter)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PlanningFileError(f"{what} must be a list of names, got {value!r}")
    return list(value)


@contextlib.contextmanager
def malformed(source: str) -> Iterator[None]:
    """Reading a file's fields: a missing key or a value of the wrong shape is one line
    naming the file (the field checks above name the field themselves)."""
    try:
        yield
    except PlanningFileError:
        raise
    except KeyError as exc:
        raise PlanningFileError(f"{source} is malformed: it has no {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise PlanningFileError(f"{source} is malformed: {exc}") from None
