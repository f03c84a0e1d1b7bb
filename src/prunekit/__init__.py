"""prunekit: compress PyTorch models until they fit a deployment budget, and prove the gain.

The public API is imported lazily so that ``import prunekit`` (and ``prunekit --help``) stays
fast: torch is only imported when a function that needs it is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load_model": "prunekit.models",
    "LoadedModel": "prunekit.models",
    "analyze": "prunekit.measure.analysis",
    "Analysis": "prunekit.measure.analysis",
    "count_macs": "prunekit.measure.macs",
    "count_params": "prunekit.measure.params",
    "measure_latency": "prunekit.measure.latency",
    "evaluate_classification": "prunekit.evaluate",
}

if TYPE_CHECKING:
    from prunekit.evaluate import evaluate_classification
    from prunekit.measure.analysis import Analysis, analyze
    from prunekit.measure.latency import measure_latency
    from prunekit.measure.macs import count_macs
    from prunekit.measure.params import count_params
    from prunekit.models import LoadedModel, load_model

__all__ = [
    "Analysis",
    "LoadedModel",
    "__version__",
    "analyze",
    "count_macs",
    "count_params",
    "evaluate_classification",
    "load_model",
    "measure_latency",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prunekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
