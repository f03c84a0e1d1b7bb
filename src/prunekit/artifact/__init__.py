"""Pruned models on disk, without pickle: architecture as JSON, weights as safetensors.

An artifact directory holds:

* ``prunekit.json``: how to build the original model (torchvision name, ``module:callable``
  or a Hugging Face config), the shape of every parameter and buffer after pruning, the
  module attributes and classes that pruning changed, the example-input spec, and the
  SHA-256 of every weights file;
* ``model.safetensors``: the weights;
* ``.prunekit-output.json``: which files prunekit wrote (``prunekit._outputs``).

Loading builds the original architecture on the meta device, applies the recorded classes,
attributes and shapes, and loads the weights: outputs are identical to the saved model. It
runs nothing outside an allowlist unless ``trust_code=True`` (``artifact._recipes``), checks
every file's SHA-256, and never follows a path out of the directory. Writing goes to a staging
directory first, so a failure never leaves a half-written artifact, and an existing directory
is only replaced when asked (``force=True``) and when it is a previous artifact of the same
writer with nothing else in it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._outputs import OutputDir, check_output_dir, sha256_file
from prunekit._tensors import aliases, named_tensors, replace_tensor
from prunekit._version import __version__
from prunekit.artifact._attributes import decode, diff_modules
from prunekit.artifact._manifest import (
    EXTRA,
    FILES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    WEIGHTS,
    ArtifactError,
    check_attribute,
    read_manifest,
)
from prunekit.artifact._recipes import build_original, describe, import_class, with_relative_file
from prunekit.errors import ModelSourceError, PrunekitError
from prunekit.inputs import InputSpec, spec_from_dict
from prunekit.pruning.blocks import DroppedResidual, replace_block

__all__ = [
    "EXTRA",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "WEIGHTS",
    "ArtifactError",
    "is_artifact",
    "load",
    "load_input_spec",
    "read_manifest",
    "save",
    "write_directory",
]

SAVE_COMMAND = "prunekit.artifact.save()"
Say = Callable[[str], None]


def is_artifact(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def write_directory(
    directory: str | Path | OutputDir,
    writer: Callable[[Path], None],
    force: bool = False,
    *,
    command: str = SAVE_COMMAND,
) -> Path:
    """Run ``writer(staging_dir)`` then move the result to ``directory`` atomically.

    ``directory`` is either a path (checked now: see ``prunekit._outputs.check_output_dir``) or
    an ``OutputDir`` a command checked before its work began."""
    target = (
        directory
        if isinstance(directory, OutputDir)
        else check_output_dir(directory, command, force=force, option="directory")
    )
    return target.write(writer)


def manifest_for(
    model: nn.Module,
    recipe: dict[str, Any],
    input_spec: InputSpec | None,
    task: str = "unknown",
    original: nn.Module | None = None,
) -> dict[str, Any]:
    """The manifest of ``model``; ``original``: the unpruned model ``recipe`` builds (built
    here when None)."""
    if original is None:
        original = build_original(recipe, trust_code=True, say=lambda _: None)
    attributes, classes = diff_modules(original, model)
    tensors = {
        name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for name, t in named_tensors(model).items()
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "prunekit_version": __version__,
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
    directory: str | Path | OutputDir,
    *,
    recipe: dict[str, Any],
    input_spec: InputSpec | None = None,
    task: str = "unknown",
    extra_files: dict[str, Any] | None = None,
    tensor_files: dict[str, dict[str, torch.Tensor]] | None = None,
    byte_files: dict[str, bytes] | None = None,
    force: bool = False,
) -> Path:
    """Save ``model`` (pruned or not) as an artifact directory; ``recipe`` builds its original.

    ``extra_files`` maps file names to JSON-able objects written beside (e.g. ``prune.json``);
    ``tensor_files`` maps file names to tensors saved as safetensors beside (e.g. the packed
    ``sparse.safetensors`` of ``prunekit sparsify``), listed in the manifest with their hash;
    ``byte_files`` maps relative paths to raw bytes written beside (pictures, e.g.
    ``diagnosis/mask-sparse.png``).
    Before anything is written, the manifest is checked to rebuild ``model``'s structure: a
    recipe that builds another architecture is refused instead of saved unloadable.
    """
    import json

    from safetensors.torch import save_file, save_model

    if not isinstance(model, nn.Module):
        raise ArtifactError(f"save() needs an nn.Module, got {type(model).__name__}")
    if not isinstance(recipe, dict):
        raise ArtifactError(
            "save() needs recipe=, a dict saying how to build the original model (for example "
            "LoadedModel.recipe from prunekit.load_model)"
        )
    target = (
        directory
        if isinstance(directory, OutputDir)
        else check_output_dir(directory, SAVE_COMMAND, force=force, option="directory")
    )
    unknown = sorted(set(tensor_files or {}) - set(FILES))
    if unknown:
        raise ArtifactError(f"an artifact holds no file named {unknown[0]!r}; known: {FILES}")
    recipe = with_relative_file(recipe, target.path)
    original = build_original(recipe, trust_code=True, say=lambda _: None)  # built once
    manifest = manifest_for(model, recipe, input_spec, task, original)
    _check_rebuilds(model, manifest, original)

    def writer(tmp: Path) -> None:
        weights = tmp / WEIGHTS
        save_model(model, str(weights))
        manifest["files"] = {
            WEIGHTS: {"sha256": sha256_file(weights), "bytes": weights.stat().st_size}
        }
        extra = _non_persistent(model)
        if extra:
            save_file({k: v.detach().contiguous() for k, v in extra.items()}, str(tmp / EXTRA))
            manifest["files"][EXTRA] = {
                "sha256": sha256_file(tmp / EXTRA),
                "bytes": (tmp / EXTRA).stat().st_size,
            }
        for name, tensors in (tensor_files or {}).items():
            save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / name))
            manifest["files"][name] = {
                "sha256": sha256_file(tmp / name),
                "bytes": (tmp / name).stat().st_size,
            }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for name, data in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=1))
        for relative, raw in (byte_files or {}).items():
            path = tmp / relative
            if not path.resolve().is_relative_to(tmp.resolve()):
                raise ArtifactError(f"{relative!r} would be written outside the artifact")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(raw)

    return target.write(writer)


def _check_rebuilds(model: nn.Module, manifest: dict[str, Any], original: nn.Module) -> None:
    """Loading ``manifest`` must give ``model``'s tensors (checked on ``original``, which this
    changes: it is not needed afterwards)."""
    try:
        skeleton = _skeleton(manifest, trust_code=True, artifact_dir=None, say=None,
                             original=original)  # fmt: skip
    except PrunekitError as exc:
        raise ArtifactError(
            f"save(): the recipe {describe(manifest['recipe'])} does not rebuild this model, so "
            f"the artifact could not be loaded ({exc}); pass the recipe of the model that was "
            "pruned (LoadedModel.recipe)"
        ) from None
    have = {k: list(t.shape) for k, t in named_tensors(model).items()}
    rebuilt = {k: list(t.shape) for k, t in named_tensors(skeleton).items()}
    if have != rebuilt:
        raise ArtifactError("save(): the manifest does not describe the model's tensors")


def _non_persistent(model: nn.Module) -> dict[str, torch.Tensor]:
    extra = {}
    for prefix, module in model.named_modules():
        for name in module._non_persistent_buffers_set:
            buffer = module._buffers.get(name)
            if buffer is not None:
                extra[f"{prefix}.{name}" if prefix else name] = buffer
    return extra


def _check_files(directory: Path, manifest: dict[str, Any]) -> None:
    root = directory.resolve()
    for name, info in manifest["files"].items():
        path = directory / name
        if path.is_symlink() or not path.resolve().is_relative_to(root):
            raise ArtifactError(f"{path} is a link; an artifact's files must lie in it")
        if not path.is_file():
            raise ArtifactError(f"{directory} is missing {name}")
        if path.stat().st_size != info["bytes"] or sha256_file(path) != info["sha256"]:
            raise ArtifactError(
                f"{path} does not match its checksum in {MANIFEST} (corrupt or replaced)"
            )


def _retie(tied: list[list[tuple[nn.Module, str]]]) -> None:
    """``to_empty`` gives every holder of a tied tensor (an embedding shared with an LM
    decoder) its own empty tensor; the ties are put back, so the one stored copy fills all."""
    for holders in tied:
        module, attr = holders[0]
        kept = module._parameters.get(attr)
        shared = kept if kept is not None else module._buffers[attr]
        assert shared is not None
        replace_tensor(holders, shared, shared, keep_object=True)


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


def _set_attribute(module: nn.Module, name: str, attr: str, value: Any) -> None:
    check_attribute(attr, value, f"{MANIFEST}: attribute {name}.{attr}")
    current = getattr(type(module), attr, None)
    if callable(current) or isinstance(current, property):
        raise ArtifactError(f"{MANIFEST}: {name}.{attr} is a method of {type(module).__name__}")
    setattr(module, attr, decode(value))


def _skeleton(
    manifest: dict[str, Any],
    *,
    trust_code: bool,
    artifact_dir: Path | None,
    say: Say | None,
    original: nn.Module | None = None,
) -> nn.Module:
    """The artifact's architecture on the meta device, every tensor at its saved shape
    (``original``: the recipe's model, already built; it is changed in place)."""
    try:
        model = (
            original
            if original is not None
            else build_original(
                manifest["recipe"], trust_code=trust_code, artifact_dir=artifact_dir, say=say
            )
        )
    except ModelSourceError:
        raise
    except Exception as exc:
        raise ArtifactError(f"building the artifact's original model failed: {exc}") from None
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
        modules[name].__class__ = import_class(path, trust_code=trust_code)
    for name, attrs in manifest["attributes"].items():
        if name not in modules:
            raise ArtifactError(
                f"{MANIFEST} names module {name!r}, which the rebuilt model does not have"
            )
        for attr, value in attrs.items():
            _set_attribute(modules[name], name, attr, value)
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
    return model


def load(
    directory: str | Path,
    *,
    device: str | torch.device = "cpu",
    trust_code: bool = False,
    say: Say | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved in ``directory``; returns (model in eval mode, manifest).

    ``trust_code``: let the artifact run the user code its recipe names (``module:callable``
    or ``file.py:callable`` outside prunekit's allowlist); without it such an artifact is
    refused with ``UntrustedCodeError`` before anything runs. ``say`` hears what trusted code
    runs (default: a ``logging`` warning on the ``prunekit`` logger)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory).expanduser()
    manifest = read_manifest(directory)
    _check_files(directory, manifest)
    weights = directory / WEIGHTS
    model = _skeleton(manifest, trust_code=trust_code, artifact_dir=directory, say=say)
    tied = [holders for holders in aliases(model).values() if len(holders) > 1]
    model = model.to_empty(device=device)
    _retie(tied)
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
    if not data:
        return None
    try:
        return spec_from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{MANIFEST}: the 'input' entry is malformed ({exc!r})") from None
