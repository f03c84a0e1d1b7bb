"""The front door: one verb per action (``import prunekit as pk``).

Verbs that change a model in place end in ``_`` and return None; each verb takes one frozen
config dataclass, checked when built, with ``to_dict`` / ``from_dict``. See ``prunekit``'s
package docstring for the list.
"""

from __future__ import annotations

from prunekit.api._config import ConfigError
from prunekit.api.data import load_data
from prunekit.api.evaluation import evaluate
from prunekit.api.io import load, save
from prunekit.api.mcu import compress_for_mcu
from prunekit.api.planning import PlanConfig, SensitivityConfig, plan, sensitivity
from prunekit.api.prune import PlanPruning, TargetPruning, prune_
from prunekit.api.recover import RecoverConfig, recover_
from prunekit.api.reporting import write_report
from prunekit.api.sparsify import SparsifyConfig, sparsify_
from prunekit.pruning.config import StructuredPruning
from prunekit.pruning.transformer import TransformerPruning

__all__ = [
    "ConfigError",
    "PlanConfig",
    "PlanPruning",
    "RecoverConfig",
    "SensitivityConfig",
    "SparsifyConfig",
    "StructuredPruning",
    "TargetPruning",
    "TransformerPruning",
    "compress_for_mcu",
    "evaluate",
    "load",
    "load_data",
    "plan",
    "prune_",
    "recover_",
    "save",
    "sensitivity",
    "sparsify_",
    "write_report",
]
