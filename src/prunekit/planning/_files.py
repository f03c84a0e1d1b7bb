"""JSON files of the planning workflow: atomic writes, clear read errors, header checks."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunekit.planning.fingerprint import PlanningFileError


def write_json_atomic(path: Path, data: Any, *, allow_nan: bool = True) -> None:
    """Write to a temporary file beside ``path``, flushed to disk, and rename it over
    ``path``: an interrupted write never leaves a truncated file."""
    text = json.dumps(data, indent=1, allow_nan=allow_nan) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path, what: str) -> Any:
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
