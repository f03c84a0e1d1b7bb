"""Where prunekit writes: checked before the work, written atomically, never over the user's files.

Every output directory prunekit writes holds a record, ``.prunekit-output.json``, naming the
command that wrote it and the SHA-256 of every file it wrote. ``--force`` (and the demo's rerun)
may replace a directory only when that record says the same command wrote it and every file in
it is one the record lists, unchanged; anything else is refused, naming the files that would be
lost. The working directory, its parents, the home directory and the filesystem root are never
an output directory, whatever the flags (git and rsync take the same care with a work tree).

Writing goes to a staging directory (or file) beside the output, named
``.<name>.prunekit-tmp-<pid>-<random>``, which is renamed into place at the end: an interrupted
run never leaves a half-written output. A run killed outright (SIGKILL) leaves the staging
entry behind; the next run for the same output removes it (when the process that made it is
gone) and says so. Permissions follow the umask: staging entries are made private by
``mkdtemp``/``mkstemp``, so they are opened up to what ``open`` would have created.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit._version import __version__
from prunekit.errors import OutputPathError

RECORD = ".prunekit-output.json"
RECORD_FORMAT = "prunekit-output"
_STAGING = "prunekit-tmp"
_RETIRED = "prunekit-old"
Log = Callable[[str], None]


OutputError = OutputPathError  # the short name used in this module


# ------------------------------------------------------------------------------ permissions


def umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def open_permissions(path: Path) -> None:
    """Give a ``mkdtemp``/``mkstemp`` entry the mode ``mkdir``/``open`` would have given it."""
    mode = 0o777 if path.is_dir() else 0o666
    os.chmod(path, mode & ~umask())


def open_tree_permissions(directory: Path) -> None:
    """``open_permissions`` for ``directory`` and everything in it (some writers, safetensors
    among them, create private files whatever the umask)."""
    mask = umask()
    os.chmod(directory, 0o777 & ~mask)
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~mask)


# ---------------------------------------------------------------------------------- hashing


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ path checks


def _protected_dirs() -> list[Path]:
    """Directories no command may ever replace: the working directory and its parents, the home
    directory."""
    cwd = Path.cwd().resolve()
    return [cwd, *cwd.parents, Path.home().resolve()]


def _check_not_protected(path: Path, option: str) -> None:
    resolved = path.resolve()
    for protected in _protected_dirs():
        if resolved == protected:
            what = (
                "the working directory"
                if protected == Path.cwd().resolve()
                else "the home directory"
                if protected == Path.home().resolve()
                else "a parent of the working directory"
            )
            raise OutputError(
                f"{option} {path} is {what}; prunekit never writes its output over it. "
                f"Give a new directory, e.g. {option} out"
            )


def check_parent_writable(path: Path, option: str) -> None:
    """The nearest existing ancestor of ``path`` is a directory we can create entries in.

    A real probe (an entry made and removed at once): ``os.access`` does not see read-only
    mounts, and root passes it anyway."""
    ancestor = path.parent if str(path.parent) else Path(".")
    while not ancestor.exists():
        if ancestor.is_symlink():
            raise OutputError(f"{option} {path}: {ancestor} is a broken symbolic link")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{option} {path}: {ancestor} is a file, not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".prunekit-probe-", dir=ancestor)
        os.rmdir(probe)
    except OSError as exc:
        raise OutputError(
            f"{option} {path}: cannot write in {ancestor} ({exc.strerror or exc})"
        ) from None


# ------------------------------------------------------------------------------ the record


def read_record(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        return None
    files = data.get("files")
    if not isinstance(files, dict):
        return None
    return data


def _listing(directory: Path) -> Iterator[Path]:
    """Every entry under ``directory`` that is not a directory (files, links, sockets...),
    relative to it; symbolic links are not followed."""
    for root, dirs, files in os.walk(directory):
        base = Path(root)
        for name in list(dirs):
            if (base / name).is_symlink():
                files.append(name)
                dirs.remove(name)
        for name in files:
            yield (base / name).relative_to(directory)


def foreign_files(directory: Path, command: str) -> list[str]:
    """What in ``directory`` the record of a ``command`` run does not account for: files it did
    not write, files changed since, or everything when there is no record (or another command's).
    Empty when the directory may be replaced."""
    entries = sorted(p.as_posix() for p in _listing(directory))
    record = read_record(directory)
    if record is None or record.get("command") != command:
        return [e for e in entries if e != RECORD]
    written: dict[str, Any] = record["files"]
    problems = []
    for entry in entries:
        if entry == RECORD:
            continue
        path = directory / entry
        if entry not in written or path.is_symlink():
            problems.append(entry)
        elif sha256_file(path) != written[entry]:
            problems.append(f"{entry} (changed since prunekit wrote it)")
    return problems


def write_record(directory: Path, command: str) -> None:
    files = {
        p.as_posix(): sha256_file(directory / p)
        for p in sorted(_listing(directory))
        if p.as_posix() != RECORD
    }
    record = {
        "format": RECORD_FORMAT,
        "version": 1,
        "command": command,
        "prunekit_version": __version__,
        "files": files,
    }
    (directory / RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------ debris


def _staging_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}\.(?:{_STAGING}|{_RETIRED})-(\d+)-[A-Za-z0-9_]+")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_debris(path: Path, log: Log | None = None) -> list[str]:
    """Remove what an interrupted earlier run for ``path`` left beside it (staging and retired
    entries whose process is gone); returns their names."""
    parent = path.parent
    if not parent.is_dir():
        return []
    pattern = _staging_pattern(path.name)
    removed = []
    for entry in parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry.name)
    if removed and log is not None:
        log(f"removed what an interrupted run left beside {path}: {', '.join(sorted(removed))}")
    return removed


def _staging_prefix(path: Path, kind: str) -> str:
    return f".{path.name}.{kind}-{os.getpid()}-"


# ------------------------------------------------------------------------------ directories


@dataclass(frozen=True)
class OutputDir:
    """An output directory that passed every check; ``write`` fills it atomically."""

    path: Path
    command: str
    option: str = "--out"

    def write(self, writer: Callable[[Path], None], log: Log | None = None) -> Path:
        """Run ``writer(staging)``, record what it wrote, and move it to ``path``.

        The directory found at ``path`` (if any) is checked again just before it is replaced:
        a file the user added or changed during the run stops the swap, and the new output is
        left beside it, named in the error."""
        path = self.path
        remove_debris(path, log)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(path, _STAGING), dir=path.parent))
        try:
            writer(staging)
            write_record(staging, self.command)
            open_tree_permissions(staging)
            if path.exists() or path.is_symlink():
                problems = _replace_problems(path, self.command)
                if problems:
                    kept = path.parent / f"{path.name}.prunekit-new"
                    if not kept.exists():
                        os.replace(staging, kept)
                        where = f"the new output is in {kept}"
                    else:
                        where = "the new output was discarded"
                    raise OutputError(
                        f"{path} changed during the run ({_summary(problems)}); it was left "
                        f"as it is and {where}"
                    )
                retired = Path(
                    tempfile.mkdtemp(prefix=_staging_prefix(path, _RETIRED), dir=path.parent)
                )
                os.replace(path, retired / path.name)
                os.replace(staging, path)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return path


def _summary(items: list[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _replace_problems(path: Path, command: str) -> list[str]:
    if path.is_symlink() or not path.is_dir():
        return [f"{path.name} is not a directory"]
    return foreign_files(path, command)


def check_output_dir(
    out: str | os.PathLike[str],
    command: str,
    *,
    force: bool = False,
    option: str = "--out",
    replace_own: bool = False,
    log: Log | None = None,
) -> OutputDir:
    """Check, before any work, that ``command`` may write the directory ``out``.

    ``force`` (or ``replace_own``, the demo's rerun rule) lets a previous output of the same
    command be replaced, only when it holds nothing else; an empty directory is always fine.
    Raises ``OutputError`` naming the reason otherwise."""
    if not str(out).strip():
        raise OutputError(f"{option} is empty; give a directory")
    path = Path(out).expanduser()
    if path.is_symlink():
        raise OutputError(f"{option} {path} is a symbolic link; give the real directory")
    _check_not_protected(path, option)
    path = path.resolve()
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"{option} {path} exists and is not a directory")
        if any(path.iterdir()):
            if not (force or replace_own):
                raise OutputError(
                    f"{path} already exists; choose another {option} or pass --force to "
                    f"replace a previous `{command}` output there"
                )
            problems = foreign_files(path, command)
            if problems:
                record = read_record(path)
                why = (
                    f"it was written by `{record['command']}`, not `{command}`, and holds"
                    if record is not None and record.get("command") != command
                    else "it is not a prunekit output and holds"
                    if record is None
                    else "it holds files prunekit did not write there, or changed since"
                )
                raise OutputError(
                    f"refusing to replace {path}: {why}: {_summary(problems)}. "
                    f"Move them away or choose another {option}"
                )
    _ready(path, option, log)
    return OutputDir(path, command, option)


def _ready(path: Path, option: str, log: Log | None) -> None:
    """The last checks of an output path; then, with ``log``, the debris of a killed run for
    it is removed (and said)."""
    check_parent_writable(path, option)
    if log is not None:
        remove_debris(path, log)


# ------------------------------------------------------------------------------ files


def check_output_file(
    out: str | os.PathLike[str],
    *,
    option: str = "--out",
    formats: tuple[str, ...] = (),
    force: bool = False,
    replace_own: bool = False,
    log: Log | None = None,
) -> Path:
    """Check, before any work, that a single output file may be written at ``out``.

    An existing file is replaced only with ``force`` (or ``replace_own``) and only when it is a
    prunekit file of one of ``formats`` (JSON ``format`` header); ``formats=("png",)`` accepts a
    PNG that prunekit wrote (``save_figure`` marks it). With ``log``, what an interrupted
    earlier run left beside the file is removed now, and said."""
    if not str(out).strip():
        raise OutputError(f"{option} is empty; give a file name")
    path = Path(out).expanduser()
    if path.is_dir():
        raise OutputError(f"{option} {path} is a directory; give a file name")
    if path.exists() or path.is_symlink():
        if path.is_symlink():
            raise OutputError(f"{option} {path} is a symbolic link; give a plain file")
        if not (force or replace_own):
            raise OutputError(f"{path} already exists; choose another {option} or pass --force")
        if not is_own_file(path, formats):
            wanted = " or ".join(f.removeprefix("prunekit-").replace("-", " ") for f in formats)
            raise OutputError(
                f"refusing to replace {path}: it is not a prunekit {wanted} file; "
                f"choose another {option}"
            )
    _ready(path, option, log)
    return path


PNG_MARK = "prunekit"
_MAX_OWN_JSON = 256 << 20  # prunekit's JSON files are far smaller


def is_own_file(path: Path, formats: tuple[str, ...]) -> bool:
    if "png" in formats and _png_software(path).startswith(PNG_MARK):
        return True
    try:
        with path.open("rb") as f:
            head = f.read(1 << 16)
        own_sized = path.stat().st_size <= _MAX_OWN_JSON  # never read a user's huge file whole
        json_object = head.lstrip()[:1] == b"{" and own_sized
        data = json.loads(path.read_text(encoding="utf-8")) if json_object else None
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") in formats


def _png_software(path: Path) -> str:
    """The ``Software`` text of a PNG file ("" when there is none or it is not a PNG)."""
    try:
        with path.open("rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return ""
            while True:
                header = f.read(8)
                if len(header) < 8:
                    return ""
                length, kind = int.from_bytes(header[:4], "big"), header[4:]
                if kind == b"IDAT" or length > 1 << 20:
                    return ""
                body = f.read(length + 4)[:length]
                if kind == b"tEXt":
                    key, _, value = body.partition(b"\0")
                    if key == b"Software":
                        return value.decode("latin-1")
    except OSError:
        return ""


def save_figure(figure: Any, path: str | os.PathLike[str], **kwargs: Any) -> None:
    """``figure.savefig`` through a staging file, marked as prunekit's (so a rerun may replace
    it and nothing else)."""
    target = Path(path)
    if target.exists() and not is_own_file(target, ("png",)):
        raise OutputError(f"refusing to replace {target}: it is not a plot prunekit wrote")
    write_file_atomic(
        target,
        lambda f: figure.savefig(
            f, format="png", metadata={"Software": f"{PNG_MARK} {__version__}"}, **kwargs
        ),
        binary=True,
    )


def write_file_atomic(path: Path, write: Callable[[Any], None], *, binary: bool = False) -> None:
    """``write(file)`` into a staging file beside ``path``, flushed to disk, then renamed over
    ``path``: an interrupted write never leaves a truncated file (nor, after the next run, a
    staging file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_debris(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_staging_prefix(path, _STAGING))
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        open_permissions(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any, *, allow_nan: bool = True) -> None:
    """Write to a staging file beside ``path``, flushed to disk, and rename it over ``path``:
    an interrupted write never leaves a truncated file. An existing file is replaced only when
    it is a prunekit file of the same ``format`` as ``data``: never the user's own file."""
    text = json.dumps(data, indent=1, allow_nan=allow_nan) + "\n"
    kind = data.get("format") if isinstance(data, Mapping) else None
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give a file name")
    if path.exists() and not is_own_file(path, (kind,) if isinstance(kind, str) else ()):
        raise OutputError(
            f"refusing to replace {path}: it is not a prunekit "
            f"{str(kind or 'JSON').removeprefix('prunekit-').replace('-', ' ')} file"
        )
    write_file_atomic(path, lambda f: f.write(text))
