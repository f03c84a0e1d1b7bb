"""``prunekit.json`` read as untrusted data: every entry checked for type and range before
loading acts on it (a manifest comes from whoever handed over the artifact)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prunekit._files import read_json
from prunekit.artifact._attributes import SKIP, decode, is_simple
from prunekit.errors import PrunekitError

MANIFEST = "prunekit.json"
WEIGHTS = "model.safetensors"
EXTRA = "buffers.safetensors"  # non-persistent buffers, which state_dict leaves out
SPARSE = "sparse.safetensors"  # sparse tensors bit-packed (prunekit sparsify), beside the dense
FILES = (WEIGHTS, EXTRA, SPARSE)  # the only files an artifact's manifest may list
FORMAT = "prunekit-artifact"
FORMAT_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_.\-]*")  # a module name: "" is the model itself


class ArtifactError(PrunekitError):
    """An artifact directory that is missing files, corrupt, or does not match its manifest."""


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a prunekit artifact: {MANIFEST} is missing")
    manifest = read_json(path, ArtifactError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a prunekit artifact manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {manifest.get('format_version')}; this prunekit reads version {FORMAT_VERSION}"
        )
    for key in ("recipe", "tensors", "attributes", "classes", "files"):
        if key not in manifest:
            raise ArtifactError(f"{path} lacks the {key!r} entry")
    _check_types(manifest, path)
    return manifest


def _fail(path: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{path}: {what}")


def _check_types(manifest: dict[str, Any], path: Path) -> None:
    expected = {"recipe": dict, "tensors": dict, "attributes": dict, "classes": dict, "files": dict}
    for key, kind in expected.items():
        if not isinstance(manifest[key], kind):
            raise _fail(path, f"{key!r} must be a JSON object")
    for name, info in manifest["tensors"].items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or not isinstance(info.get("dtype"), str)
        ):
            raise _fail(path, f"tensor {name!r} needs a shape of non-negative integers and a dtype")
    for name, attrs in manifest["attributes"].items():
        if not isinstance(attrs, dict):
            raise _fail(path, f"attributes of {name!r} must be a JSON object")
        for attr, value in attrs.items():
            check_attribute(attr, value, f"{path}: attribute {name}.{attr}")
    for name, cls in manifest["classes"].items():
        if not isinstance(cls, str):
            raise _fail(path, f"class of {name!r} must be a string")
    blocks = manifest.get("dropped_blocks", [])
    if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
        raise _fail(path, "'dropped_blocks' must be a list of module names")
    for name in [*manifest["attributes"], *manifest["classes"], *blocks]:
        if not _NAME.fullmatch(name):
            raise _fail(path, f"{name!r} is not a module name")
    check_files_entry(manifest["files"], path)


def check_attribute(attr: Any, value: Any, where: str) -> None:
    """An attribute loading may set: a plain public-or-private name that is not part of
    nn.Module's machinery, holding plain data."""
    if (
        not isinstance(attr, str)
        or not attr.isidentifier()
        or attr.startswith("__")
        or attr in SKIP
        or "hook" in attr
    ):
        raise ArtifactError(f"{where}: {attr!r} is not an attribute loading may set")
    if not is_simple(decode(value)):
        raise ArtifactError(f"{where}: only numbers, strings, booleans and lists of them")


def check_files_entry(files: dict[str, Any], path: Path) -> None:
    """Only the artifact's own file names, each with its size and a SHA-256 (mandatory: an
    entry without one would turn the check off)."""
    if WEIGHTS not in files:
        raise _fail(path, f"'files' does not list {WEIGHTS}")
    for name, info in files.items():
        if name not in FILES:
            raise _fail(
                path,
                f"'files' lists {name!r}; an artifact holds only {' and '.join(FILES)} "
                "(no other names, no paths)",
            )
        digest = info.get("sha256") if isinstance(info, dict) else None
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _fail(path, f"{name} has no valid sha256 in 'files' (it is mandatory)")
        size = info.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _fail(path, f"{name} has no valid size ('bytes') in 'files'")
