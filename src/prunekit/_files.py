"""Reading the JSON and YAML files users hand in: every failure is one line in the caller's
error class (written files go through ``prunekit._outputs``). Torch-free, so the report and
the planners' file checks can use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: Any, error: type[Exception], what: str = "") -> Any:
    """The JSON in ``path``; a directory, a missing or unreadable file and bad syntax raise
    ``error`` in one line (``what``: how the file is named in it, e.g. "latency table ")."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what}{path} is a directory; give the JSON file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what}{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise error(f"cannot read {what}{path}: {reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what}{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None


def read_yaml(path: Any, error: type[Exception], what: str = "", kind: str = "YAML") -> Any:
    """The YAML (or JSON, a subset) in ``path``; a missing or unreadable file and bad syntax
    raise ``error`` in one line (``what``: how the file is named in it, e.g. "the cost file ")."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"cannot read {what}{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid {kind}: {exc}") from None
