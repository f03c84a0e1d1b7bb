"""JSON files of the planning workflow: clear read errors, header checks.

They are written by ``prunekit._outputs.write_json_atomic``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunekit.planning.fingerprint import PlanningFileError


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
