"""Layer (block) importance of Hugging Face encoders, and physical removal of layers.

A transformer layer adds its output to the residual stream, so a whole layer can be skipped
(replaced by the identity) and the model still runs. ``layer_importance`` skips each encoder
layer alone and measures, on calibration batches, how much the output embeddings lose in
fidelity to the dense model (``prunekit.evaluate.embedding.fidelity``): the drop of the
Spearman correlation of pairwise similarities (``metric="spearman"``, the default) or of the
mean cosine (``metric="mean_cosine"``). A layer whose removal barely changes the embeddings is
a candidate for ``drop_layers``, which removes encoder layers for real (a shorter
layer list, ``config.num_hidden_layers`` updated), so that the model saves their
time and memory and saves/loads with the right depth.

Supported: models with one ``encoder.layer`` list (BERT, RoBERTa, ELECTRA, MiniLM and the
other BERT-like encoders of ``transformers``, bare or under a task head), one
``transformer.layer`` list (DistilBERT) or one ``layers`` list (ViT in transformers 5).

Scoring layers one at a time ignores interactions: dropping two layers costs more than the
two drops added up, so after dropping layers, score the remaining ones again before dropping
more (as in the iterative layer pruning of Sajjad et al., "On the Effect of Dropping Layers
of Pre-trained Transformer Models", 2023).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.criteria._common import (
    Batch,
    CriterionError,
    calibration_batches,
    model_device,
)
from prunekit.criteria.registry import PruneConfigError
from prunekit.evaluate.embedding import BatchEmbedding, fidelity, sentence_embedding

__all__ = [
    "METRICS",
    "LayerImportance",
    "drop_layers",
    "encoder_layers",
    "layer_importance",
]

METRICS = ("spearman", "mean_cosine")

_LAYER_LISTS = ("encoder.layer", "transformer.layer", "layers")


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(qualified name, module list)`` of the model's encoder layers: the one ``ModuleList``
    named ``encoder.layer`` (BERT, RoBERTa...), ``transformer.layer`` (DistilBERT) or
    ``layers`` (ViT in transformers 5), possibly under a prefix (``bert.encoder.layer`` in a
    task model)."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and any(name == n or name.endswith("." + n) for n in _LAYER_LISTS)
    ]
    if len(found) != 1:
        what = "none" if not found else ", ".join(name for name, _ in found)
        raise CriterionError(
            f"{type(model).__name__} needs exactly one list of encoder layers named "
            "'encoder.layer', 'transformer.layer' or 'layers' (Hugging Face BERT, RoBERTa, "
            f"DistilBERT, ViT and similar encoders); found {what}"
        )
    return found[0]


def default_embedding(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean-pooled, L2-normalised last hidden state of a batch of keyword arguments."""
    if batch.inputs.args or not batch.inputs.kwargs:
        raise CriterionError(
            "the default embedding needs batches of keyword arguments (input_ids, "
            "attention_mask, ...; see prunekit.evaluate.embedding.sentence_batches), got "
            f"{batch.inputs.describe()}: pass embedding_fn=<function (model, batch) -> "
            "embeddings [batch, dim]> for other inputs"
        )
    return sentence_embedding(model, batch.inputs.kwargs)


def batch_embedding(
    model: nn.Module, batch: Batch, embedding_fn: BatchEmbedding | None
) -> torch.Tensor:
    """The embeddings [batch, dim] of one calibration batch, checked."""
    out = (
        default_embedding(model, batch) if embedding_fn is None else embedding_fn(model, batch.item)
    )
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CriterionError(f"the embedding function must return a [batch, dim] tensor, got {got}")
    return out


@dataclass(frozen=True)
class LayerImportance:
    """Per encoder layer (in order): the fidelity of the model with that layer alone skipped.

    ``scores``: the fidelity drop by ``metric``, ``1 - fidelity`` (higher = more important);
    ``spearman`` and ``mean_cosine``: both fidelities with the layer skipped.
    """

    metric: str
    scores: np.ndarray
    spearman: np.ndarray
    mean_cosine: np.ndarray

    def least_important(self, count: int) -> list[int]:
        """The ``count`` layers whose removal costs least, least important first."""
        return [int(i) for i in np.argsort(self.scores, kind="stable")[:count]]


def _skip_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
    """Replace a layer's output by its input hidden states (in the output's own format)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    if isinstance(out, torch.Tensor):
        return hidden
    if isinstance(out, tuple) and out:  # transformers 4.x layers return (hidden, attentions...)
        return (hidden, *out[1:])
    raise CriterionError(
        f"cannot skip {type(module).__name__}: it returns {type(out).__name__}, not a tensor "
        "or a tuple starting with the hidden states"
    )


def _embeddings(
    model: nn.Module, batches: list[Batch], embedding_fn: BatchEmbedding | None
) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [batch_embedding(model, b, embedding_fn).detach().double().cpu() for b in batches]
        )


def layer_importance(
    model: nn.Module,
    calibration: Iterable[Any],
    *,
    metric: str = "spearman",
    embedding_fn: BatchEmbedding | None = None,
) -> LayerImportance:
    """Skip each encoder layer alone and measure the fidelity of the embeddings (over all
    ``calibration`` batches together) to those of the full model.

    ``calibration``: batches of keyword arguments, e.g.
    ``prunekit.evaluate.embedding.sentence_batches(tokenizer, sentences)``; it is iterated
    once and kept in memory. ``embedding_fn(model, batch) -> [batch, dim]``: how a batch is
    embedded (default: mean pooling of the last hidden state over the attention mask, then
    L2 normalisation, as sentence-transformers does). The Spearman metric needs at least 3
    samples in all. The model runs in eval mode without gradients; its mode is restored.
    """
    if metric not in METRICS:
        raise CriterionError(
            f"unknown layer metric {metric!r}; choose one of: {', '.join(METRICS)}"
        )
    _, layers = encoder_layers(model)
    batches = list(calibration_batches(calibration, "layer_importance", model_device(model)))
    was_training = model.training
    model.eval()
    try:
        dense = _embeddings(model, batches, embedding_fn)
        if dense.shape[0] < 3:
            raise CriterionError(
                f"layer importance needs at least 3 calibration samples, got {dense.shape[0]}"
            )
        spearman, cosine = [], []
        for layer in layers:
            handle = layer.register_forward_hook(_skip_hook, with_kwargs=True)
            try:
                skipped = _embeddings(model, batches, embedding_fn)
            finally:
                handle.remove()
            result = fidelity(dense, skipped)
            spearman.append(result["spearman"])
            cosine.append(result["mean_cosine"])
    finally:
        model.train(was_training)
    s, c = np.array(spearman), np.array(cosine)
    return LayerImportance(metric, 1.0 - (s if metric == "spearman" else c), s, c)


def drop_layers(model: nn.Module, indices: Sequence[int]) -> nn.Module:
    """Remove the encoder layers at ``indices`` (positions in the current layer list) from
    ``model`` in place and return it.

    The layer list becomes shorter, the remaining layers keep their order (and have their
    ``layer_idx`` renumbered), and the configuration follows: ``num_hidden_layers``
    (``n_layers`` for DistilBERT), a per-layer ``layer_types`` list, and ``pruned_heads`` of
    older transformers versions. The result computes exactly what the original model computes
    with those layers replaced by the identity. At least one layer must remain.
    """
    name, layers = encoder_layers(model)
    count = len(layers)
    drop: set[int] = set()
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < count:
            raise PruneConfigError(
                f"layer index {i!r} is not one of the {count} encoder layers (0..{count - 1})"
            )
        if int(i) in drop:
            raise PruneConfigError(f"layer {int(i)} is listed twice")
        drop.add(int(i))
    if len(drop) >= count:
        raise PruneConfigError(f"cannot drop all {count} encoder layers: keep at least one")
    if not drop:
        return model
    kept = [i for i in range(count) if i not in drop]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    setattr(parent, attr, nn.ModuleList([layers[i] for i in kept]))
    for new, layer in enumerate(getattr(parent, attr)):
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                setattr(m, "layer_idx", new)  # noqa: B010 (mypy: Module attributes)
    if isinstance(getattr(parent, "n_layers", None), int):  # DistilBERT's Transformer
        setattr(parent, "n_layers", len(kept))  # noqa: B010
    configs = {id(c): c for c in (getattr(model, "config", None), getattr(parent, "config", None))}
    for config in configs.values():
        if config is None:
            continue
        if hasattr(config, "num_hidden_layers"):
            config.num_hidden_layers = len(kept)
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == count:
            config.layer_types = [types[i] for i in kept]
        pruned = getattr(config, "pruned_heads", None)
        if isinstance(pruned, dict) and pruned:
            renumber = {old: new for new, old in enumerate(kept)}
            config.pruned_heads = {
                renumber[int(k)]: v for k, v in pruned.items() if int(k) in renumber
            }
    return model
