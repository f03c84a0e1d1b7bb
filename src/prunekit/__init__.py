"""prunekit: compress PyTorch models until they fit a deployment budget, and prove the gain.

The front door is one verb per action (``import prunekit as pk``)::

    loaded = pk.load("resnet18")                       # any model spec
    pk.prune_(loaded.model, example, pk.TargetPruning(macs=0.5))   # in place, returns None
    pk.recover_(loaded.model, "fashion-mnist", pk.RecoverConfig(epochs=2), teacher=dense)
    pk.evaluate(loaded.model, "fashion-mnist")         # on the held-out split, says which
    pk.save(loaded.model, "out/")                      # the rebuild recipe is inferred

plus ``pk.sensitivity``, ``pk.plan``, ``pk.sparsify_`` (unstructured / N:M sparsity), ``pk.compress_for_mcu``, ``pk.load_data`` (data specs)
and ``pk.write_report`` (the management report).

The public API is imported lazily so that ``import prunekit`` (and ``prunekit --help``) stays
fast: torch is only imported when a function that needs it is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from prunekit._version import __version__

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
    "ConfigError": "prunekit.api",
    "PlanConfig": "prunekit.api",
    "PlanPruning": "prunekit.api",
    "RecoverConfig": "prunekit.api",
    "SensitivityConfig": "prunekit.api",
    "SparsifyConfig": "prunekit.api",
    "StructuredPruning": "prunekit.api",
    "TargetPruning": "prunekit.api",
    "TransformerPruning": "prunekit.api",
    "compress_for_mcu": "prunekit.api",
    "load_data": "prunekit.api",
    "evaluate": "prunekit.api",
    "load": "prunekit.api",
    "plan": "prunekit.api",
    "prune_": "prunekit.api",
    "recover_": "prunekit.api",
    "save": "prunekit.api",
    "sensitivity": "prunekit.api",
    "sparsify_": "prunekit.api",
    "write_report": "prunekit.api",
}

if TYPE_CHECKING:
    from prunekit.api import (
        ConfigError,
        PlanConfig,
        PlanPruning,
        RecoverConfig,
        SensitivityConfig,
        SparsifyConfig,
        StructuredPruning,
        TargetPruning,
        TransformerPruning,
        compress_for_mcu,
        evaluate,
        load,
        load_data,
        plan,
        prune_,
        recover_,
        save,
        sensitivity,
        sparsify_,
        write_report,
    )
    from prunekit.evaluate import evaluate_classification
    from prunekit.measure.analysis import Analysis, analyze
    from prunekit.measure.latency import measure_latency
    from prunekit.measure.macs import count_macs
    from prunekit.measure.params import count_params
    from prunekit.models import LoadedModel, load_model

__all__ = [
    "Analysis",
    "ConfigError",
    "LoadedModel",
    "PlanConfig",
    "PlanPruning",
    "RecoverConfig",
    "SensitivityConfig",
    "SparsifyConfig",
    "StructuredPruning",
    "TargetPruning",
    "TransformerPruning",
    "__version__",
    "analyze",
    "compress_for_mcu",
    "count_macs",
    "count_params",
    "evaluate",
    "evaluate_classification",
    "load",
    "load_data",
    "load_model",
    "measure_latency",
    "plan",
    "prune_",
    "recover_",
    "save",
    "sensitivity",
    "sparsify_",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prunekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
