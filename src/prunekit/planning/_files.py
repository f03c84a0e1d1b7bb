"""JSON files of the planning workflow: atomic writes, clear read errors, header checks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunekit._outputs import is_own_file, write_file_atomic
from prunekit.errors import OutputPathError
from prunekit.planning.fingerprint import PlanningFileError


def write_json_atomic(path: Path, data: Any, *, allow_nan: bool = True) -> None:
    """Write to a staging file beside ``path``, flushed to disk, and rename it over ``path``:
    an interrupted write never leaves a truncated file. An existing file is replaced only when
    it is a prunekit file of the same ``format`` as ``data``: never the user's own file."""
    text = json.dumps(data, indent=1, allow_nan=allow_nan) + "\n"
    kind = data.get("format") if isinstance(data, Mapping) else None
    if path.is_dir():
        raise OutputPathError(f"{path} is a directory; give a file name")
    if path.exists() and not is_own_file(path, (kind,) if isinstance(kind, str) else ()):
        raise OutputPathError(
            f"refusing to replace {path}: it is not a prunekit "
            f"{str(kind or 'JSON').removeprefix('prunekit-').replace('-', ' ')} file"
        )
    write_file_atomic(path, lambda f: f.write(text))


def read_json(path: Path, what: str) -> Any:
    if path.is_dir():
        raise PlanningFileError(f"{what} {path} is a directory; give the JSON file")
    if not path.is_file():
        raise PlanningFileError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanningFileError(f"{what} {path} is not valid JSON: {exc}") from None


def check_header(data: Mapping[str, Any], kind: str, version: int, what: str, source: str) -> None:
    """``data`` must be a ``kind`` file of ``version`` (``what`` names it in the error)."""
    if not isinstance(data, Mapping) or data.get("format") != kind:
        raise PlanningFileError(f"{source} is not a prunekit {what} file")
    if data.get("version") != version:
        raise PlanningFileError(
            f"{source} has version {data.get('version')}; this prunekit reads {version}"
        )
