"""Accuracy of a (compressed) model on a labelled dataset."""

from __future__ import annotations

from prunekit.evaluate.classification import ClassificationMetrics, evaluate_classification

__all__ = ["ClassificationMetrics", "evaluate_classification"]
