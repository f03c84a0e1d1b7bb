"""Accuracy of a (compressed) model on a labelled dataset; fidelity of its sentence embeddings."""

from __future__ import annotations

from prunekit.evaluate.classification import ClassificationMetrics, evaluate_classification
from prunekit.evaluate.embedding import embed, fidelity, sentence_batches

__all__ = [
    "ClassificationMetrics",
    "embed",
    "evaluate_classification",
    "fidelity",
    "sentence_batches",
]
