"""How to build the *original* (unpruned) model again, described as data -- and what loading
may run without the user's say-so.

An artifact is handed around like a weights file, so loading one must be as safe as loading
safetensors: by default it builds only from an allowlist, and never imports or calls anything
else. Allowed without trust:

* ``torchvision``: a torchvision model builder, by its registered name (no weights: they come
  from the artifact, so nothing is downloaded);
* ``huggingface``: a ``transformers`` model class (a ``PreTrainedModel`` subclass exported by
  the package) built from the stored config of a built-in ``model_type``;
* ``callable``: an ``nn.Module`` class defined in ``torch.nn``, ``torchvision.models`` /
  ``torchvision.ops`` or prunekit (constructing a module from JSON keyword arguments runs no
  code of the artifact's choosing);
* ``classes`` entries (modules whose class pruning swapped): ``nn.Module`` subclasses from the
  same packages or ``transformers.models``.

Everything else -- the user's own ``package.module:callable`` or ``file.py:callable`` -- runs
only with ``trust_code=True`` (CLI ``--trust-code``), and then prunekit says what it runs. A
``file.py`` recipe stores the file's SHA-256 and where it was: a different file is refused
even when trusted, a missing one is named with where it was looked for.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._outputs import sha256_file
from prunekit.errors import ModelSourceError, UntrustedCodeError

log = logging.getLogger("prunekit")

# packages whose nn.Module classes may be built or swapped in without trust
MODULE_PACKAGES = ("torch.nn", "torchvision.models", "torchvision.ops", "prunekit")
CLASS_PACKAGES = (*MODULE_PACKAGES, "transformers.models")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
Say = Callable[[str], None]


def _in_packages(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _split(path: str, what: str) -> tuple[str, str]:
    module, sep, qualname = path.partition(":")
    if not sep or not _DOTTED.fullmatch(module) or not _DOTTED.fullmatch(qualname):
        raise ModelSourceError(f"{what} {path!r} is not of the form package.module:Name")
    return module, qualname


def _resolve(module_name: str, qualname: str, what: str) -> Any:
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelSourceError(f"{what} {module_name}:{qualname} cannot be found: {exc}") from None
    return obj


def _untrusted(what: str, detail: str) -> UntrustedCodeError:
    return UntrustedCodeError(
        f"{what} would run {detail}, which is outside what loading runs without trust "
        "(torchvision builders, transformers classes, torch.nn and prunekit modules). "
        "Nothing was run. Pass --trust-code (trust_code=True) if you trust where it came from"
    )


def import_class(path: Any, *, trust_code: bool = False) -> type:
    """The ``nn.Module`` subclass named ``package.module:Qual.Name`` (a manifest ``classes``
    entry); outside ``CLASS_PACKAGES`` only with ``trust_code``."""
    if not isinstance(path, str):
        raise ModelSourceError(f"a class entry must be a string, got {path!r}")
    module_name, qualname = _split(path, "class")
    if not trust_code and not _in_packages(module_name, CLASS_PACKAGES):
        raise _untrusted(f"class entry {path!r}", f"an import of module {module_name!r}")
    obj = _resolve(module_name, qualname, "class")
    if not isinstance(obj, type) or not issubclass(obj, nn.Module):
        raise ModelSourceError(f"{path} is not an nn.Module class")
    return obj


# ------------------------------------------------------------------------ describing a recipe


def describe(recipe: dict[str, Any]) -> str:
    """What building ``recipe`` runs, in words (for messages)."""
    kind = recipe.get("kind")
    kwargs = recipe.get("kwargs") or {}
    args = f"(**{json.dumps(kwargs)})" if kwargs else "()"
    if kind == "torchvision":
        return f"torchvision's {recipe.get('name')}{args}"
    if kind == "huggingface":
        return f"transformers.{recipe.get('class')}(config)"
    if kind == "callable":
        where = ""
        file = recipe.get("file")
        if isinstance(file, dict):
            where = f" (file {file.get('path')}, sha256 {str(file.get('sha256'))[:12]}...)"
        return f"{recipe.get('spec')}{args}{where}"
    return f"a recipe of kind {kind!r}"


def file_record(path: Path) -> dict[str, Any]:
    """What a ``file.py:callable`` recipe stores about its file."""
    return {"path": str(path.resolve()), "sha256": sha256_file(path)}


def with_relative_file(recipe: dict[str, Any], artifact_dir: Path) -> dict[str, Any]:
    """``recipe`` with its file's hash (when a hand-written recipe lacks it) and its path
    relative to the artifact when the file lies beside it (in the artifact's parent directory
    or below), so that the two can move together."""
    from prunekit.models import callable_source

    spec = recipe.get("spec")
    if recipe.get("kind") != "callable" or not isinstance(spec, str):
        return recipe
    left = spec.rpartition(":")[0]
    if not callable_source.is_file_spec(left):
        return recipe
    file = recipe.get("file")
    if not isinstance(file, dict):
        if not Path(left).is_file():
            raise ModelSourceError(f"the recipe names {left}, which does not exist")
        file = file_record(Path(left))
        recipe = {**recipe, "file": file}
    source = Path(str(file.get("path")))
    parent = artifact_dir.resolve().parent
    if not source.is_relative_to(parent):
        return recipe
    relative = os.path.relpath(source, artifact_dir.resolve())
    return {**recipe, "file": {**file, "relative": Path(relative).as_posix()}}


# ------------------------------------------------------------------------ building


def build_original(
    recipe: Any,
    *,
    trust_code: bool = False,
    artifact_dir: Path | None = None,
    say: Say | None = None,
) -> nn.Module:
    """Build the unpruned architecture from a recipe, on the meta device when it can be.

    Weights are not needed (they come from the artifact), so no download ever happens; a
    builder that loads its own weights does so quietly (on the meta device that is a no-op).
    Raises ``UntrustedCodeError`` before running anything outside the allowlist unless
    ``trust_code``; ``say`` (default: a logging warning) is told what trusted code runs.
    """
    if not isinstance(recipe, dict):
        raise ModelSourceError(f"the artifact's recipe must be a JSON object, got {recipe!r}")
    build = _builder(recipe, trust_code, artifact_dir, say)
    with warnings.catch_warnings():
        # a builder's own load_state_dict on the meta device: "copying from a non-meta parameter
        # ... is a no-op", once per tensor; the artifact's weights are loaded afterwards anyway
        warnings.filterwarnings("ignore", message=r".*non-meta parameter.*")
        try:
            with torch.device("meta"):
                return build()
        except ModelSourceError:
            raise
        except Exception:  # a builder that computes with tensors at construction time
            return build()


def _builder(
    recipe: dict[str, Any], trust_code: bool, artifact_dir: Path | None, say: Say | None
) -> Callable[[], nn.Module]:
    kind = recipe.get("kind")
    kwargs = recipe.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ModelSourceError(
            f"the artifact recipe's kwargs must be a JSON object, got {kwargs!r}"
        )
    if kind == "torchvision":
        return _torchvision_builder(recipe, kwargs)
    if kind == "huggingface":
        return _huggingface_builder(recipe)
    if kind == "callable":
        return _callable_builder(recipe, kwargs, trust_code, artifact_dir, say)
    raise ModelSourceError(f"unknown model recipe kind {kind!r} in the artifact")


def _torchvision_builder(recipe: dict[str, Any], kwargs: dict[str, Any]) -> Callable[[], nn.Module]:
    from prunekit.models import torchvision_source

    name = recipe.get("name")
    if not isinstance(name, str) or name not in torchvision_source.all_names():
        raise ModelSourceError(
            f"the artifact names torchvision model {name!r}, which does not exist"
        )
    downloads = sorted(k for k in kwargs if k.startswith("weights"))
    if downloads:
        raise ModelSourceError(
            f"the artifact's recipe asks for {', '.join(downloads)}: an artifact carries its own "
            "weights and never downloads any"
        )
    return lambda: torchvision_source.build(name, model_kwargs=kwargs or None).model


def _huggingface_builder(recipe: dict[str, Any]) -> Callable[[], nn.Module]:
    from prunekit.models.huggingface_source import _transformers

    transformers = _transformers()
    config_data, class_name = recipe.get("config"), recipe.get("class")
    if not isinstance(config_data, dict) or not isinstance(class_name, str):
        raise ModelSourceError(
            "the artifact's huggingface recipe needs a config object and a class name"
        )
    cls = getattr(transformers, class_name, None) if class_name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ModelSourceError(f"transformers has no model class {class_name!r} (artifact recipe)")
    model_type = config_data.get("model_type")
    try:
        config_cls = transformers.AutoConfig.for_model(model_type).__class__
    except (ValueError, KeyError, TypeError):
        raise ModelSourceError(
            f"the artifact's config has model_type {model_type!r}, which this transformers does "
            "not know (prunekit never loads a config's own code from an artifact)"
        ) from None
    config = config_cls.from_dict(config_data)

    def build() -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(config).eval()

    return build


def _callable_builder(
    recipe: dict[str, Any],
    kwargs: dict[str, Any],
    trust_code: bool,
    artifact_dir: Path | None,
    say: Say | None,
) -> Callable[[], nn.Module]:
    from prunekit.models import callable_source

    spec = recipe.get("spec")
    if not isinstance(spec, str) or not callable_source.looks_like_callable_spec(spec):
        raise ModelSourceError(f"the artifact's recipe spec {spec!r} is not module:callable")
    left, _, attr = spec.rpartition(":")
    label = f"the artifact {artifact_dir}" if artifact_dir is not None else "the recipe"
    if callable_source.is_file_spec(left):
        path = _locate_file(recipe, left, artifact_dir)
        if not trust_code:
            raise _untrusted(label, f"code from a file: {describe(recipe)}")
        (say or log.warning)(f"running {describe(recipe)} to build the architecture (trusted)")
        return lambda: callable_source.build(f"{path}:{attr}", model_kwargs=kwargs or None).model
    if not trust_code:
        _check_allowed_callable(left, attr, recipe, label)
    else:
        (say or log.warning)(f"running {describe(recipe)} to build the architecture (trusted)")
    return lambda: callable_source.build(spec, model_kwargs=kwargs or None).model


# prunekit's own builder functions (classes need no entry), named one by one: any other
# function of an allowed package is refused without trust, however harmless it looks
PRUNEKIT_BUILDERS: dict[str, frozenset[str]] = {
    "prunekit.nn.perception": frozenset({"depth_net", "seg_net", "centernet_lite"}),
    "prunekit.nn.unet": frozenset({"unet"}),
    "prunekit.nn": frozenset({"unet"}),  # the same builder, re-exported
}


def _check_allowed_callable(module: str, attr: str, recipe: dict[str, Any], label: str) -> None:
    if not _DOTTED.fullmatch(module) or not _in_packages(module, MODULE_PACKAGES):
        raise _untrusted(label, describe(recipe))
    obj = _resolve(module, attr, "builder")
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return
    if module.startswith("torchvision.models"):  # a builder function torchvision registers
        from prunekit.models import torchvision_source

        if attr in torchvision_source.all_names():
            return
    if attr in PRUNEKIT_BUILDERS.get(module, ()):
        return
    raise _untrusted(label, describe(recipe))


def _locate_file(recipe: dict[str, Any], left: str, artifact_dir: Path | None) -> Path:
    """The recipe's ``file.py``, found beside the artifact or where it was, with its hash."""
    file = recipe.get("file")
    if not isinstance(file, dict) or not isinstance(file.get("sha256"), str):
        raise ModelSourceError(
            f"the artifact's recipe {left} names a Python file without its SHA-256; it cannot "
            "tell which file built it (save it again with this prunekit)"
        )
    candidates: list[Path] = []
    if artifact_dir is not None and isinstance(file.get("relative"), str):
        candidates.append((artifact_dir / file["relative"]).resolve())
    if isinstance(file.get("path"), str):
        candidates.append(Path(file["path"]))
    different = []
    for candidate in dict.fromkeys(candidates):
        if candidate.is_file():
            if sha256_file(candidate) == file["sha256"]:
                return candidate
            different.append(str(candidate))
    if different:
        raise ModelSourceError(
            f"the artifact was built by {Path(left).name} with sha256 {file['sha256'][:12]}..., "
            f"but {' and '.join(different)} is a different file; refusing to build from it"
        )
    raise ModelSourceError(
        f"the artifact needs {Path(left).name} (sha256 {file['sha256'][:12]}...), which is "
        f"missing: looked for it at {' and '.join(map(str, dict.fromkeys(candidates)))}"
    )
