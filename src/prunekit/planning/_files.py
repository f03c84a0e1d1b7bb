"""JSON files of the planning workflow: clear read errors, header checks.

They are written by ``prunekit._outputs.write_json_atomic``.
"""

from __future__ import annotations

from collections.abc import Mapping
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
            f"{source} has version {data.get('version')}; this prunekit reads {version}"
        )
