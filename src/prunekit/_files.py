"""Reading the JSON and YAML files users hand in: every failure is one line in the caller's
error class (written files go through ``prunekit._outputs``). Torch-free, so the report and
the planners' file checks can use it."""

from __future__ import annotations

import functools
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
    """The YAML (or JSON, a subset) in ``path``; a missing or unreadable file, text that is
    not UTF-8, bad syntax and a key given twice in one mapping (YAML would keep the last
    silently: ``budget_ms: 5`` then ``budget_ms: 0.001``) raise ``error`` in one line
    (``what``: how the file is named in it, e.g. "the cost file ")."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{what}{path} is not UTF-8 text (a {kind} file was expected)") from None
    except OSError as exc:
        raise error(f"cannot read {what}{path}: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=_unique_key_loader())
    except yaml.MarkedYAMLError as exc:  # one line: the problem and where
        mark = exc.problem_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise error(f"{path} is not valid {kind}: {exc.problem or exc.context}{at}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid {kind}: {exc}") from None


@functools.cache
def _unique_key_loader() -> Any:
    """yaml's SafeLoader, refusing a key given twice in one mapping (built on first use: yaml
    is imported only when a file is read)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is given twice in one mapping",
                        key_node.start_mark)  # fmt: skip
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader
