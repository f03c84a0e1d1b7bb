"""Pruned Hugging Face encoders (BERT, RoBERTa, DistilBERT, ViT), saved the Hugging Face way.

After structured pruning, each layer of a transformer has its own head count and FFN width,
which the stock ``config.json`` cannot describe. ``save_pretrained_pruned(model, directory)``
writes a directory that Hugging Face tools load with
``AutoModel.from_pretrained(directory, trust_remote_code=True)``: ``config.json`` (the
model's config plus per-layer sizes and an ``auto_map``), ``model.safetensors`` and
``modeling_prunekit.py``, a small file that needs only torch and transformers.
``load_pruned(directory)`` loads it with prunekit's own copy of that code, without remote
code; ``prunekit.load_model`` and the CLI recognise such a directory.

The ``transformers`` package is imported when a function is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from prunekit.errors import PrunekitError


class HFExportError(PrunekitError):
    """A model that cannot be exported as a Hugging Face directory, or a directory that is not
    a prunekit export."""


_LAZY = {
    "save_pretrained_pruned": "prunekit.hf.export",
    "load_pruned": "prunekit.hf.load",
    "is_pruned_directory": "prunekit.hf.load",
}

if TYPE_CHECKING:
    from prunekit.hf.export import save_pretrained_pruned
    from prunekit.hf.load import is_pruned_directory, load_pruned

__all__ = ["HFExportError", "is_pruned_directory", "load_pruned", "save_pretrained_pruned"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prunekit.hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
