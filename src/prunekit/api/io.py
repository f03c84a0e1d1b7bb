"""``pk.load`` / ``pk.save``: models in, artifacts out, the rebuild recipe never hand-written.

``pk.load`` remembers how it built each model (weakly: forgetting the model forgets the
entry), so ``pk.save(model, dir)`` after pruning it in place finds the recipe of its original
architecture by itself; ``source=`` names it explicitly (a ``LoadedModel`` or a model spec).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from torch import nn

from prunekit._outputs import OutputDir
from prunekit.models import LoadedModel, load_model

_SOURCES: weakref.WeakKeyDictionary[nn.Module, LoadedModel] = weakref.WeakKeyDictionary()


def load(spec: str | Path, **kwargs: Any) -> LoadedModel:
    """``prunekit.load_model`` (any model spec: torchvision name, ``module:callable``,
    ``file.py:callable``, Hugging Face or prunekit artifact directory), remembered for
    ``save``. Keyword arguments: those of ``load_model`` (``trust_code=`` ...)."""
    loaded = load_model(str(spec), **kwargs)
    _SOURCES[loaded.model] = loaded
    return loaded


def source_of(model: nn.Module) -> LoadedModel | None:
    return _SOURCES.get(model)


def save(
    model: nn.Module,
    directory: str | Path | OutputDir,
    *,
    source: LoadedModel | str | None = None,
    extra_files: dict[str, Any] | None = None,
    tensor_files: dict[str, Any] | None = None,
    byte_files: dict[str, bytes] | None = None,
    force: bool = False,
    trust_code: bool = False,
) -> Path:
    """Save ``model`` (pruned or not) as an artifact directory that ``pk.load`` rebuilds.

    ``source``: how the original was loaded -- a ``LoadedModel``, or a model spec loaded
    here to read its recipe; default: what ``pk.load`` returned for this very model object.
    ``directory`` may be an ``OutputDir`` a command has already checked. ``extra_files``:
    JSON files written beside; ``tensor_files``: safetensors files (name -> tensors by key);
    ``byte_files``: raw files by relative path (pictures).
    """
    from prunekit.artifact import save as save_artifact
    from prunekit.errors import ModelSourceError

    if source is None:
        source = _SOURCES.get(model)
        if source is None:
            raise ModelSourceError(
                "save() cannot tell how this model was built: load it with pk.load(...) or pass "
                "source= (the LoadedModel, or the model spec it came from)"
            )
    elif isinstance(source, (str, Path)):
        source = load_model(str(source), trust_code=trust_code)
    if not isinstance(source, LoadedModel):
        raise ModelSourceError(f"source must be a LoadedModel or a model spec, got {source!r}")
    return save_artifact(model, directory, recipe=source.recipe, input_spec=source.input_spec,
                         task=source.task, extra_files=extra_files, tensor_files=tensor_files,
                         byte_files=byte_files,
                         force=force)  # fmt: skip
