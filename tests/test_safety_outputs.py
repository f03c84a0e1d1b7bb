"""No command deletes what prunekit did not write; outputs are checked before the work, are
never half-written, follow the umask, and a rerun clears what a killed run left."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from prunekit._outputs import RECORD, check_output_dir, remove_debris
from prunekit.errors import OutputPathError

MODEL = "import torch\nfrom torch import nn\n\ndef net():\n    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))\n"  # fmt: skip
SHAPE = ("--input-shape", "1,3,16,16")


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Every file under ``root`` (but ``skip``) -> SHA-256 of its bytes, and its mode."""
    found = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = f"{digest} {oct(path.stat().st_mode)}"
        elif path.is_dir():
            found[str(path.relative_to(root)) + "/"] = "dir"
    return found


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """home/project/work, the working directory, with the user's files at every level."""
    home = tmp_path / "home"
    work = home / "project" / "work"
    work.mkdir(parents=True)
    for level in (home, home / "project", work):
        (level / "notes.txt").write_text(f"the user's notes in {level.name}\n")
    (work / "net.py").write_text(MODEL)
    (work / "user-dir").mkdir()
    (work / "user-dir" / "data.csv").write_text("a,b\n1,2\n")
    (work / "plan.json").write_text('{"mine": true}\n')
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    yield work


def _sensitivity(cli) -> None:  # type: ignore[no-untyped-def]
    assert (
        cli("sensitivity", "net.py:net", *SHAPE, "--ratios", "0.5", "--out", "sens.json").code == 0
    )


# command name -> arguments before --out (every command that takes --out, and demo)
COMMANDS = {
    "prune": ["prune", "net.py:net", *SHAPE, "--ratio", "0.5"],
    "mcu": ["mcu", "--dataset", "digits", "--quick", "--flash", "6KB"],
    "demo": ["demo"],
    "sensitivity": ["sensitivity", "net.py:net", *SHAPE, "--ratios", "0.5"],
    "profile": ["profile", "net.py:net", *SHAPE, "--quick"],
    "plan": ["plan", "net.py:net", *SHAPE, "--target", "macs=0.8", "--sensitivity", "sens.json"],
}
FORCE = {"prune", "mcu", "demo", "profile", "plan"}  # sensitivity resumes instead


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("out", [".", "..", "~", "user-dir", "notes.txt", "plan.json"])
def test_user_files_survive_any_out(cli, work: Path, command: str, out: str) -> None:  # type: ignore[no-untyped-def]
    if command == "plan":
        _sensitivity(cli)
    home = work.parent.parent
    before = snapshot(home)
    args = [*COMMANDS[command], "--out", out, *(["--force"] if command in FORCE else [])]
    result = cli(*args)
    assert result.code == 1, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert "Traceback" not in result.err and "internal error" not in result.err
    assert lines and "error" in lines[-1]
    assert snapshot(home) == before  # byte for byte, modes included; nothing added


@pytest.mark.parametrize("command", ["prune", "mcu", "demo"])
def test_force_replaces_only_its_own_previous_output(cli, work: Path, command: str) -> None:  # type: ignore[no-untyped-def]
    args = [*COMMANDS[command], "--out", "out"]
    assert cli(*args).code == 0
    record = json.loads((work / "out" / RECORD).read_text())
    assert record["command"] == f"prunekit {command}"
    assert set(record["files"]) == {
        p.relative_to(work / "out").as_posix() for p in (work / "out").rglob("*") if p.is_file()
    } - {RECORD}
    assert cli(*args, "--force").code == 0  # its own output: replaced

    (work / "out" / "mine.txt").write_text("keep me")
    result = cli(*args, "--force")
    assert result.code == 1 and "mine.txt" in result.err and "refusing to replace" in result.err
    assert (work / "out" / "mine.txt").read_text() == "keep me"
    (work / "out" / "mine.txt").unlink()

    first = sorted(record["files"])[0]
    changed = (work / "out" / first).read_bytes() + b"\n"
    (work / "out" / first).write_bytes(changed)
    result = cli(*args, "--force")
    assert result.code == 1 and f"{first} (changed since prunekit wrote it)" in result.err
    assert (work / "out" / first).read_bytes() == changed


def test_force_never_replaces_another_commands_output(cli, work: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli(*COMMANDS["prune"], "--out", "out").code == 0
    before = snapshot(work / "out")
    result = cli(*COMMANDS["mcu"], "--out", "out", "--force")
    assert result.code == 1 and "written by `prunekit prune`, not `prunekit mcu`" in result.err
    assert snapshot(work / "out") == before


def test_demo_rerun_replaces_its_output_but_never_a_user_file(cli, work: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("demo").code == 0
    assert cli("demo").code == 0  # the README command, run twice
    (work / "prunekit-demo" / "my-notes.md").write_text("mine")
    result = cli("demo")
    assert result.code == 1 and "my-notes.md" in result.err
    assert (work / "prunekit-demo" / "my-notes.md").read_text() == "mine"


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("notes.txt/x", "is a file, not a directory"),
        ("/proc/prunekit-test/out", "cannot write in /proc"),
        ("", "is empty"),
    ],
)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_output_paths_fail_before_the_work(  # type: ignore[no-untyped-def]
    cli, work: Path, command: str, out: str, message: str
) -> None:
    if command == "plan":
        _sensitivity(cli)
    before = snapshot(work.parent.parent)
    result = cli(*COMMANDS[command], "--out", out)
    assert result.code == 1 and message in result.err, result.err
    assert "internal error" not in result.err
    # failed before loading any model: no progress lines before the error
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert snapshot(work.parent.parent) == before


def test_a_bad_plot_path_fails_before_the_sweep(cli, work: Path) -> None:  # type: ignore[no-untyped-def]
    for plot, message in (("notes.txt/p.png", "is a file, not a directory"),
                          ("curves.pdf", "give a name ending in .png"),
                          ("notes.txt", "give a name ending in .png")):  # fmt: skip
        result = cli(*COMMANDS["sensitivity"], "--out", "s.json", "--plot", plot)
        assert result.code == 1 and message in result.err and len(result.err.splitlines()) == 1
    (work / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    result = cli(*COMMANDS["sensitivity"], "--out", "s.json", "--plot", "photo.png")
    assert result.code == 1 and "refusing to replace" in result.err
    assert not (work / "s.json").exists()
    assert cli(*COMMANDS["sensitivity"], "--out", "s.json", "--plot", "curves.png").code == 0
    assert cli(*COMMANDS["sensitivity"], "--out", "s.json", "--plot", "curves.png").code == 0


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_outputs_follow_the_umask(cli, work: Path, mask: int) -> None:  # type: ignore[no-untyped-def]
    previous = os.umask(mask)
    try:
        assert cli(*COMMANDS["prune"], "--out", "out").code == 0
        _sensitivity(cli)
    finally:
        os.umask(previous)
    for path in [work / "out", *(work / "out").iterdir(), work / "sens.json"]:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert path.stat().st_mode & 0o777 == expected, (path, oct(path.stat().st_mode))


def test_debris_of_a_killed_run_is_removed_on_rerun_and_said(cli, work: Path) -> None:  # type: ignore[no-untyped-def]
    dead = 2**22 + 12345  # above the default pid_max: no such process
    staging = work / f".out.prunekit-tmp-{dead}-abc123"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"x" * 1000)
    retired = work / f".out.prunekit-old-{dead}-def456"
    retired.mkdir()
    alive = work / f".out.prunekit-tmp-{os.getpid()}-ghi789"  # a live run's: left alone
    alive.mkdir()
    stale_file = work / f".sens.json.prunekit-tmp-{dead}-xyz"
    stale_file.write_text("{")
    result = cli(*COMMANDS["prune"], "--out", "out")
    assert result.code == 0
    assert "removed what an interrupted run left" in result.err
    assert not staging.exists() and not retired.exists() and alive.exists()
    result = cli(*COMMANDS["sensitivity"], "--out", "sens.json")
    assert result.code == 0 and not stale_file.exists()
    assert "removed what an interrupted run left" in result.err


def test_a_file_added_during_the_run_stops_the_swap(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = check_output_dir(out, "prunekit prune")
    first.write(lambda d: (d / "a.txt").write_text("1"))
    again = check_output_dir(out, "prunekit prune", force=True)  # checked: replaceable
    (out / "added-meanwhile.txt").write_text("the user's")
    with pytest.raises(OutputPathError, match=r"changed during the run \(added-meanwhile\.txt\)"):
        again.write(lambda d: (d / "a.txt").write_text("2"))
    assert (out / "added-meanwhile.txt").read_text() == "the user's"
    assert (out / "a.txt").read_text() == "1"
    assert (tmp_path / "out.prunekit-new" / "a.txt").read_text() == "2"  # the work is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.prunekit-new"]


def test_only_prunekits_own_debris_names_are_touched(tmp_path: Path) -> None:
    names = [".out.tmp-abc", ".out.prunekit-tmp-x-abc", ".outx.prunekit-tmp-1-abc",
             "out.prunekit-tmp-1-abc", ".out.prunekit-tmp-1-abc.keep"]  # fmt: skip
    for name in names:
        (tmp_path / name).mkdir()
    assert remove_debris(tmp_path / "out") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_check_output_dir_refuses_protected_places_even_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    for out in (".", "..", "/", str(tmp_path)):
        with pytest.raises(OutputPathError, match="never writes its output over it"):
            check_output_dir(out, "prunekit prune", force=True)
    assert check_output_dir(str(tmp_path / "new" / "deep"), "x").path.name == "deep"
    link = tmp_path / "link"
    link.symlink_to(empty)
    with pytest.raises(OutputPathError, match="symbolic link"):
        check_output_dir(str(link), "x", force=True)
