"""The one atomic file writer (prunekit._outputs): all or nothing, and never a user's file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from prunekit._outputs import write_file_atomic, write_json_atomic
from prunekit.errors import OutputPathError


def test_a_write_that_fails_halfway_leaves_the_old_file_and_no_staging_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "table.json"
    path.write_text("old")

    def half(f) -> None:  # type: ignore[no-untyped-def]
        f.write("new, but only the first half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_file_atomic(path, half)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["table.json"]


def test_a_write_gets_the_permissions_open_would_give(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_file_atomic(tmp_path / "a.bin", lambda f: f.write(b"\x00\x01"), binary=True)
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640


def test_json_replaces_its_own_format_only(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    write_json_atomic(path, {"format": "prunekit-plan", "version": 1})
    write_json_atomic(path, {"format": "prunekit-plan", "version": 2})  # its own: replaced
    assert json.loads(path.read_text())["version"] == 2
    with pytest.raises(OutputPathError, match="not a prunekit sensitivity file"):
        write_json_atomic(path, {"format": "prunekit-sensitivity"})
    path.write_text('{"mine": 1}')
    with pytest.raises(OutputPathError, match="refusing to replace"):
        write_json_atomic(path, {"format": "prunekit-plan"})
    assert path.read_text() == '{"mine": 1}'
    with pytest.raises(OutputPathError, match="is a directory"):
        write_json_atomic(tmp_path, {"format": "prunekit-plan"})


def test_json_without_nan_refuses_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "t.json", {"x": float("nan")}, allow_nan=False)
    assert not (tmp_path / "t.json").exists()
