"""Accuracy of a (compressed) model on a labelled dataset; fidelity of its sentence embeddings.

This package shares its name with the front door's verb ``pk.evaluate(model, data, ...)``:
Python binds ``prunekit.evaluate`` to this package as soon as anything imports it, so the
package itself is made callable and calling it *is* the verb (``prunekit.api.evaluation``).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from prunekit.evaluate.classification import ClassificationMetrics, evaluate_classification
from prunekit.evaluate.embedding import embed, fidelity, sentence_batches

__all__ = [
    "ClassificationMetrics",
    "embed",
    "evaluate_classification",
    "fidelity",
    "sentence_batches",
]


class _CallableEvaluate(types.ModuleType):
    def __call__(self, model: Any, data: Any, **kwargs: Any) -> dict[str, Any]:
        from prunekit.api.evaluation import evaluate

        return evaluate(model, data, **kwargs)


sys.modules[__name__].__class__ = _CallableEvaluate
