"""Load a directory written by ``save_pretrained_pruned`` with prunekit's own code.

The classes come from ``prunekit.hf.modeling_prunekit``, the module that the export copies
into the directory, so nothing from the directory is executed: no ``trust_remote_code``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.hf import HFExportError

CONFIG = "config.json"
MARKER = "prunekit_layer_heads"  # modeling_prunekit.HEADS, without importing transformers


def is_pruned_config(config: Mapping[str, Any]) -> bool:
    """Whether a ``config.json`` (as a dict) was written by ``save_pretrained_pruned``."""
    return isinstance(config, Mapping) and MARKER in config


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise HFExportError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise HFExportError(f"{path} does not hold a JSON object")
    return config


def is_pruned_directory(directory: str | Path) -> bool:
    """Whether ``directory`` holds a model written by ``save_pretrained_pruned``."""
    directory = Path(directory).expanduser()
    if not (directory / CONFIG).is_file():
        return False
    try:
        return is_pruned_config(_read_config(directory))
    except HFExportError:
        return False


def pruned_class(config: Mapping[str, Any]) -> type:
    """The ``modeling_prunekit`` class that loads a model with this ``config.json``."""
    from prunekit.hf import modeling_prunekit as modeling

    model_type = config.get("model_type")
    family = modeling.FAMILIES.get(str(model_type))
    if family is None:
        raise HFExportError(
            f"model_type {model_type!r} is not one prunekit exports ({', '.join(modeling.FAMILIES)})"
        )
    architectures = config.get("architectures") or [family[1][0][1].__name__]
    by_name = {stock.__name__: pruned for _, stock, pruned in family[1]}
    by_name.update({pruned.__name__: pruned for _, _, pruned in family[1]})
    cls = by_name.get(str(architectures[0]))
    if cls is None:
        raise HFExportError(
            f"architecture {architectures[0]!r} is not one prunekit exports for {model_type} "
            f"({', '.join(sorted(by_name))})"
        )
    return cls


def load_pruned(
    directory: str | Path, *, attn_implementation: str | None = None, **kwargs: Any
) -> nn.Module:
    """The model saved in ``directory`` by ``save_pretrained_pruned``, in eval mode.

    ``attn_implementation`` (``"eager"``, ``"sdpa"``, ...) and ``kwargs`` (``dtype``,
    ``device_map``, ...) go to transformers' ``from_pretrained``; files are only read
    locally.
    """
    directory = Path(directory).expanduser()
    if not (directory / CONFIG).is_file():
        raise HFExportError(f"{directory} is not a model directory: {CONFIG} is missing")
    config = _read_config(directory)
    if not is_pruned_config(config):
        raise HFExportError(
            f"{directory / CONFIG} was not written by prunekit's save_pretrained_pruned "
            f"(no {MARKER}); load it with transformers"
        )
    cls: Any = pruned_class(config)
    kwargs.setdefault("local_files_only", True)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model: nn.Module = cls.from_pretrained(str(directory), **kwargs)
    return model.eval()
