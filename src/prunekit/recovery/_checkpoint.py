"""Checkpoint files and RNG state of the recovery engine (``recovery.finetuning``).

Files are written to a temporary name in the same directory and renamed over the target with
``os.replace``, so a crash never leaves a torn checkpoint. The RNG state covers torch, CUDA,
Python, NumPy and the ``torch.Generator`` objects a DataLoader shuffles with: restoring all of
them is what makes a resumed run on the CPU bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit._outputs import write_file_atomic
from prunekit.errors import PrunekitError

BEST_PREFIX = "best-epoch"


# what the checkpoint was trained from (``prunekit run`` writes its step's input digest)
INPUTS_FILE = "inputs.json"


def is_checkpoint_dir(path: Path) -> bool:
    """Whether ``path`` holds only what the recovery engine writes (``last.pt``, best-epoch
    files, staging and probe files, ``inputs.json``): a folder a user keeps under the same
    name is never trained into or deleted."""
    import fnmatch

    patterns = ("last.pt", f"{BEST_PREFIX}*.pt", "*.pt.*.tmp", ".write-test-*", INPUTS_FILE)
    return path.is_dir() and all(
        entry.is_file() and any(fnmatch.fnmatchcase(entry.name, p) for p in patterns)
        for entry in path.iterdir()
    )


def remove_checkpoint_dir(path: Path) -> None:
    """Delete a checkpoint directory the engine wrote; anything else there is refused."""
    import shutil

    from prunekit.errors import OutputPathError

    if not path.exists():
        return
    if not is_checkpoint_dir(path):
        raise OutputPathError(f"refusing to delete {path}: it holds files prunekit did not write")
    shutil.rmtree(path)


class RecoveryError(PrunekitError):
    """Fine-tuning cannot run as asked (a bad setting, a model with nothing to train)."""


class CheckpointError(RecoveryError):
    """A checkpoint directory is unusable, or its checkpoint belongs to another run."""


def prepare_dir(checkpoint_dir: str | os.PathLike[str]) -> Path:
    path = Path(checkpoint_dir)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"checkpoint_dir {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"cannot create checkpoint_dir {str(path)!r}: {exc.strerror or exc}"
        ) from None
    try:  # a real write: os.access does not see read-only mounts, and root passes it anyway
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CheckpointError(
            f"checkpoint_dir {str(path)!r} is not writable: {exc.strerror or exc}"
        ) from None
    for stale in path.glob("*.pt.*.tmp"):  # left by a crash in the middle of a write
        with contextlib.suppress(OSError):
            stale.unlink()
    return path


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through prunekit's one atomic writer (staging file, fsync, rename)."""
    write_file_atomic(path, lambda f: torch.save(obj, f), binary=True)


def load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r} ({type(exc).__name__}: {exc}); delete it or "
            "pass resume=False to start over"
        ) from None


def fingerprint(model: nn.Module) -> list[list[Any]]:
    """Name and shape of every entry of the model's state dict (parameters and buffers)."""
    return [[name, list(t.shape)] for name, t in model.state_dict().items()]


def check_fingerprint(stored: list[list[Any]], current: list[list[Any]], path: Path) -> None:
    if stored == current:
        return
    here = {name: shape for name, shape in current}
    there = {name: shape for name, shape in stored}
    diffs = []
    for name in sorted(set(here) | set(there)):
        a, b = here.get(name), there.get(name)
        if a != b:
            diffs.append(
                f"{name}: {a if a is not None else 'absent'} here, "
                f"{b if b is not None else 'absent'} in the checkpoint"
            )
    detail = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
    raise CheckpointError(
        f"checkpoint {str(path)!r} was written for a different model ({len(diffs)} tensors "
        f"differ: {detail}); use another checkpoint_dir, or resume=False to discard it"
    )


def check_config(
    stored: Mapping[str, Any], current: Mapping[str, Any], path: Path, *, ignore: tuple[str, ...]
) -> None:
    """Refuse to resume with settings that would not reproduce the stored run (keys in
    ``ignore`` may differ: where to train, how long this call may take)."""
    diffs = [
        f"{k}={stored.get(k)!r} there, {current[k]!r} here"
        for k in current
        if k not in ignore and stored.get(k) != current[k]
    ]
    diffs += [f"{k}={stored[k]!r} there, unknown here" for k in stored if k not in current]
    if diffs:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written with different settings ({'; '.join(diffs)});"
            " resuming would not reproduce that run: use another checkpoint_dir, or "
            "resume=False to discard it"
        )


def best_path(directory: Path, epoch: int) -> Path:
    return directory / f"{BEST_PREFIX}{epoch:04d}.pt"


def remove_best_files(directory: Path, keep: Path | None = None) -> None:
    for old in directory.glob(f"{BEST_PREFIX}*.pt"):
        if keep is None or old.name != keep.name:
            with contextlib.suppress(OSError):
                old.unlink()


# --- RNG state --------------------------------------------------------------------------------


def loader_generators(loader: Any) -> list[torch.Generator]:
    """``torch.Generator`` objects a DataLoader shuffles with (its own, or its sampler's)."""
    found: dict[int, torch.Generator] = {}
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(
            getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None
        ),
    ]
    for g in candidates:
        if isinstance(g, torch.Generator):
            found.setdefault(id(g), g)
    return list(found.values())


def rng_state(loader: Any) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "loader": [g.get_state() for g in loader_generators(loader)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], loader: Any, log: Callable[[str], object]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            log("the number of GPUs changed since the checkpoint: CUDA RNG states not restored")
    generators = loader_generators(loader)
    if len(generators) == len(state["loader"]):
        for g, s in zip(generators, state["loader"], strict=True):
            g.set_state(s)
    else:
        log("the train loader's generators differ from the checkpoint's: data order not restored")


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants tuples; a checkpoint may hand lists back."""
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
