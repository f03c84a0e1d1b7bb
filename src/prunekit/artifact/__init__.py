"""Pruned models on disk, without pickle: architecture as JSON, weights as safetensors.

An artifact directory holds:

* ``prunekit.json``: how to build the original model (torchvision name, ``module:callable``
  or a Hugging Face config), the shape of every parameter and buffer after pruning, the
  module attributes and classes that pruning changed, the example-input spec, and the
  SHA-256 of the weights file;
* ``model.safetensors``: the weights.

Loading builds the original architecture on the meta device, applies the recorded classes,
attributes and shapes, and loads the weights: outputs are identical to the saved model.
Writing goes to a temporary directory first, so a failure never leaves a half-written
artifact, and an existing directory is only replaced when asked (``force=True``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

import prunekit
from prunekit.artifact._attributes import decode, diff_modules
from prunekit.artifact._recipes import build_original, import_class
from prunekit.errors import PrunekitError
from prunekit.inputs import InputSpec, spec_from_dict
from prunekit.pruning._tensors import aliases, named_tensors, replace_tensor
from prunekit.pruning.blocks import DroppedResidual, replace_block

MANIFEST = "prunekit.json"
WEIGHTS = "model.safetensors"
EXTRA = "buffers.safetensors"  # non-persistent buffers, which state_dict leaves out
FORMAT = "prunekit-artifact"
FORMAT_VERSION = 1


class ArtifactError(PrunekitError):
    """An artifact directory that is missing files, corrupt, or does not match its manifest."""


def is_artifact(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _prepare_target(directory: Path, force: bool) -> None:
    if directory.exists() and not force:
        raise ArtifactError(
            f"{directory} already exists; choose another --out or pass --force to replace it"
        )
    if directory.exists() and not directory.is_dir():
        raise ArtifactError(f"{directory} exists and is not a directory")


def write_directory(directory: Path, writer: Any, force: bool = False) -> None:
    """Run ``writer(tmp_dir)`` then move the result to ``directory`` atomically."""
    directory = directory.expanduser()
    _prepare_target(directory, force)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        writer(tmp)
        if directory.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, backup / directory.name)
            os.replace(tmp, directory)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def manifest_for(
    model: nn.Module, recipe: dict[str, Any], input_spec: InputSpec | None, task: str = "unknown"
) -> dict[str, Any]:
    original = build_original(recipe)
    attributes, classes = diff_modules(original, model)
    tensors = {
        name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for name, t in named_tensors(model).items()
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "prunekit_version": prunekit.__version__,
        "recipe": recipe,
        "input": input_spec.to_dict() if input_spec is not None else None,
        "task": task,
        "tensors": tensors,
        "attributes": attributes,
        "classes": classes,
        # residual blocks replaced by their skip connection (prunekit.pruning.blocks)
        "dropped_blocks": [n for n, m in model.named_modules() if isinstance(m, DroppedResidual)],
    }


def save(
    model: nn.Module,
    directory: str | Path,
    *,
    recipe: dict[str, Any],
    input_spec: InputSpec | None = None,
    task: str = "unknown",
    extra_files: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Save ``model`` (pruned or not) as an artifact directory; ``recipe`` builds its original.

    ``extra_files`` maps file names to JSON-able objects written beside (e.g. ``prune.json``).
    """
    from safetensors.torch import save_file, save_model

    directory = Path(directory)
    manifest = manifest_for(model, recipe, input_spec, task)

    def writer(tmp: Path) -> None:
        weights = tmp / WEIGHTS
        save_model(model, str(weights))
        manifest["files"] = {WEIGHTS: {"sha256": _sha256(weights), "bytes": weights.stat().st_size}}
        extra = _non_persistent(model)
        if extra:
            save_file({k: v.detach().contiguous() for k, v in extra.items()}, str(tmp / EXTRA))
            manifest["files"][EXTRA] = {
                "sha256": _sha256(tmp / EXTRA),
                "bytes": (tmp / EXTRA).stat().st_size,
            }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for name, data in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=1))

    write_directory(directory, writer, force)
    return directory


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a prunekit artifact: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a prunekit artifact manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {manifest.get('format_version')}; this prunekit reads version {FORMAT_VERSION}"
        )
    for key in ("recipe", "tensors", "attributes", "classes", "files"):
        if key not in manifest:
            raise ArtifactError(f"{path} lacks the {key!r} entry")
    return manifest


def _non_persistent(model: nn.Module) -> dict[str, torch.Tensor]:
    extra = {}
    for prefix, module in model.named_modules():
        for name in module._non_persistent_buffers_set:
            buffer = module._buffers.get(name)
            if buffer is not None:
                extra[f"{prefix}.{name}" if prefix else name] = buffer
    return extra


def _check_files(directory: Path, manifest: dict[str, Any]) -> None:
    for name, info in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory} is missing {name}")
        if info.get("sha256") and _sha256(path) != info["sha256"]:
            raise ArtifactError(
                f"{path} does not match its checksum in {MANIFEST} (corrupt or replaced)"
            )


def _load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict`` with the model's own metadata (module versions, which some
    modules check) and with tied weights that safetensors stored once filled in."""
    own = model.state_dict(keep_vars=True)
    by_tensor: dict[int, list[str]] = {}
    for key, t in own.items():
        by_tensor.setdefault(id(t), []).append(key)
    for keys in by_tensor.values():
        present = [k for k in keys if k in state]
        for k in keys:
            if k not in state and present:
                state[k] = state[present[0]]
    metadata = getattr(own, "_metadata", None)
    if metadata is not None:
        state = dict(state)
        state_with_meta: Any = type(own)(state)
        state_with_meta._metadata = metadata
        state = state_with_meta
    model.load_state_dict(state, strict=True)


def load(
    directory: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved in ``directory``; returns (model in eval mode, manifest)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory).expanduser()
    manifest = read_manifest(directory)
    if WEIGHTS not in manifest["files"]:
        raise ArtifactError(f"{MANIFEST} does not list {WEIGHTS}")
    _check_files(directory, manifest)
    weights = directory / WEIGHTS
    model = build_original(manifest["recipe"])
    for name in manifest.get("dropped_blocks", []):
        try:  # the shift's shape is set with the other tensors' below
            replace_block(model, name, torch.zeros(0, device="meta"))
        except PrunekitError as exc:
            raise ArtifactError(f"{MANIFEST}: {exc}") from None
    modules = dict(model.named_modules())
    for name, path in manifest["classes"].items():
        if name not in modules:
            raise ArtifactError(
                f"{MANIFEST} names module {name!r}, which the rebuilt model does not have"
            )
        modules[name].__class__ = import_class(path)
    for name, attrs in manifest["attributes"].items():
        if name not in modules:
            raise ArtifactError(
                f"{MANIFEST} names module {name!r}, which the rebuilt model does not have"
            )
        for attr, value in attrs.items():
            setattr(modules[name], attr, decode(value))
    tensors = named_tensors(model)
    holders = aliases(model)
    missing = set(manifest["tensors"]) ^ set(tensors)
    if missing:
        raise ArtifactError(
            f"{MANIFEST} and the rebuilt model disagree on tensors: {sorted(missing)[:5]}"
        )
    for name, info in manifest["tensors"].items():
        t = tensors[name]
        dtype = getattr(torch, info["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ArtifactError(f"{MANIFEST}: unknown dtype {info['dtype']!r} for {name}")
        if list(t.shape) != info["shape"] or t.dtype != dtype:
            replace_tensor(
                holders[id(t)], t, torch.empty(info["shape"], dtype=dtype, device="meta")
            )
    model = model.to_empty(device=device)
    try:
        _load_state(model, load_file(str(weights), device=str(device)))
        if EXTRA in manifest["files"]:
            extra = load_file(str(directory / EXTRA), device=str(device))
            for name, t in named_tensors(model).items():
                if name in extra:
                    t.copy_(extra[name])
    except (SafetensorError, RuntimeError) as exc:
        raise ArtifactError(
            f"{weights} does not fit the architecture in {MANIFEST}: {str(exc).splitlines()[0]}"
        ) from None
    return model.eval(), manifest


def load_input_spec(manifest: dict[str, Any]) -> InputSpec | None:
    data = manifest.get("input")
    return spec_from_dict(data) if data else None
