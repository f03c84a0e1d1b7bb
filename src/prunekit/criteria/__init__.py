"""Importance criteria for structured pruning: which channels of a group matter least.

Every criterion gives one score per atom of every prunable group of a ``ChannelGraph``
(``group.id -> np.ndarray``, group-local atom order), higher = more important, which
``prunekit.pruning.prune(..., scores=...)`` uses to remove the lowest-scored atoms::

    graph = trace_channels(model, x)
    scores = group_scores(model, graph, "taylor", calibration=loader)
    prune(model, x, StructuredPruning(ratio=0.3, importance="taylor"), graph=graph,
          scores=scores)

* ``l1``, ``l2``: group weight magnitude (module ``magnitude``);
* ``taylor`` (data): first-order Taylor estimate of the loss change (``taylor``);
* ``bn_scale``: ``|gamma|`` of the group's normalisation layers (``bn_scale``);
* ``mean_activation`` (data): mean ReLU'd output of each channel (``activation``);
* ``apoz`` (data): 1 - average percentage of zeros after ReLU (``activation``);
* ``random``: seeded uniform scores, a baseline (``random``).

Calibration data (criteria marked *data*) is an iterable of batches, e.g. a ``DataLoader``:
each batch a pair ``(inputs, targets)`` or inputs alone; tensors are moved to the model's
device. Only ``taylor`` uses targets: its loss is ``loss_fn(model(inputs), targets)``
(cross-entropy by default) or ``batch_loss(model, batch)``.

Transformer encoders (Hugging Face BERT, RoBERTa, DistilBERT, ViT...) have criteria of their
own, outside the registry above because they score only some groups and need a model-specific
loss (or embeddings):

* ``head_importance`` (data): mask-gradient importance of attention heads (Michel et al.,
  "Are Sixteen Heads Really Better than One?", 2019), with a task loss or a label-free
  embedding sensitivity (``head_importance`` module);
* ``ffn_importance`` (data): the same for FFN intermediate neurons;
* ``layer_importance`` (data): the fidelity drop when one encoder layer is skipped, and
  ``drop_layers`` to remove layers (``layer_importance`` module).

The registry (``prunekit.criteria.registry``: names, which need data, the function of each)
is read without importing torch: ``criterion_names()`` lists the names. Everything else here
is imported on first use.

A criterion that cannot score some group (``bn_scale`` on a group without normalisation
layer, for instance) scores it by L1 magnitude instead and says so: the returned
``GroupScores`` lists such groups in ``.fallback`` (group id -> reason), and a warning is
logged.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prunekit.criteria.registry import (
    CRITERIA,
    DATA_CRITERIA,
    Criterion,
    CriterionError,
    criterion_names,
)

if TYPE_CHECKING:
    from torch import nn

    from prunekit.criteria._common import GroupScores
    from prunekit.criteria.activation import activation_scores
    from prunekit.criteria.bn_scale import bn_scale_scores
    from prunekit.criteria.head_importance import (
        TransformerGroup,
        ffn_importance,
        head_importance,
        transformer_groups,
    )
    from prunekit.criteria.layer_importance import (
        LayerImportance,
        drop_layers,
        encoder_layers,
        layer_importance,
    )
    from prunekit.criteria.magnitude import magnitude_scores
    from prunekit.criteria.random import random_scores
    from prunekit.criteria.taylor import BatchLoss, LossFn, taylor_scores
    from prunekit.graph import ChannelGraph

log = logging.getLogger(__name__)

# public name -> module that defines it, imported on first use (torch comes with them)
_LAZY = {
    "GroupScores": "prunekit.criteria._common",
    "activation_scores": "prunekit.criteria.activation",
    "bn_scale_scores": "prunekit.criteria.bn_scale",
    "TransformerGroup": "prunekit.criteria.head_importance",
    "ffn_importance": "prunekit.criteria.head_importance",
    "head_importance": "prunekit.criteria.head_importance",
    "transformer_groups": "prunekit.criteria.head_importance",
    "LayerImportance": "prunekit.criteria.layer_importance",
    "drop_layers": "prunekit.criteria.layer_importance",
    "encoder_layers": "prunekit.criteria.layer_importance",
    "layer_importance": "prunekit.criteria.layer_importance",
    "magnitude_scores": "prunekit.criteria.magnitude",
    "random_scores": "prunekit.criteria.random",
    "BatchLoss": "prunekit.criteria.taylor",
    "LossFn": "prunekit.criteria.taylor",
    "taylor_scores": "prunekit.criteria.taylor",
}

__all__ = [
    "CRITERIA",
    "DATA_CRITERIA",
    "BatchLoss",
    "Criterion",
    "CriterionError",
    "GroupScores",
    "LayerImportance",
    "LossFn",
    "TransformerGroup",
    "activation_scores",
    "bn_scale_scores",
    "criterion_names",
    "drop_layers",
    "encoder_layers",
    "ffn_importance",
    "group_scores",
    "head_importance",
    "layer_importance",
    "magnitude_scores",
    "random_scores",
    "taylor_scores",
    "transformer_groups",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """``head_importance`` and ``layer_importance`` name both a submodule and its main
    function: the package attribute stays the function when the submodule is imported (the
    import system sets the attribute to the submodule after running it)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("head_importance", "layer_importance") and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def group_scores(
    model: nn.Module,
    graph: ChannelGraph,
    criterion: str,
    *,
    calibration: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    batch_loss: BatchLoss | None = None,
    seed: int = 0,
) -> GroupScores:
    """Scores of every prunable group of ``graph`` (traced on ``model``) by ``criterion``.

    ``calibration``: batches for the data criteria (ignored by the others). ``loss_fn`` /
    ``batch_loss``: the loss of the Taylor criterion. ``seed``: of the random criterion.
    Raises ``CriterionError`` (a ``PruneConfigError``) for an unknown criterion, a data
    criterion without calibration data, or a loss given to a criterion that uses none.
    """
    from prunekit.criteria._common import ScoreRequest
    from prunekit.criteria.registry import load

    score = load(criterion)  # an unknown name lists the valid ones
    if criterion != "taylor" and (loss_fn is not None or batch_loss is not None):
        raise CriterionError(
            f"loss_fn / batch_loss only apply to the taylor criterion, not to {criterion!r}"
        )
    if CRITERIA[criterion].needs_data and calibration is None:
        raise CriterionError(
            f"importance criterion {criterion!r} needs calibration data: pass "
            "calibration=<an iterable of batches, e.g. a DataLoader of (inputs, targets)>"
        )
    request = ScoreRequest(criterion, calibration, loss_fn, batch_loss, seed)
    scores: GroupScores = score(model, graph, request)
    if scores.fallback:
        names = {g.id: g.name for g in graph.groups}
        log.warning(
            "importance %r could not score %d group(s), scored by L1 magnitude instead: %s",
            criterion,
            len(scores.fallback),
            "; ".join(f"{names.get(i, i)} ({why})" for i, why in scores.fallback.items()),
        )
    return scores
