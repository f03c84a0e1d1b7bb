"""Sentence embeddings of a (compressed) encoder, and how faithful they stay to the dense model.

``embed`` computes sentence-transformers style embeddings: the encoder's last hidden state,
mean-pooled over the tokens the attention mask marks as real, then L2-normalised. That is
what the sentence-transformers configuration of all-MiniLM-L6-v2 (``1_Pooling`` with
``pooling_mode_mean_tokens`` followed by a ``Normalize`` module) does, so for that model the
result matches ``SentenceTransformer.encode(..., normalize_embeddings=True)``.

``fidelity`` compares the embeddings of a pruned model with those of the dense model on the
same sentences, without labels:

* ``mean_cosine``: the mean, over sentences, of the cosine between the two embeddings of a
  sentence (1 when the pruned model reproduces the dense one up to scale);
* ``spearman``: the Spearman rank correlation between the two models' cosine similarities of
  every pair of sentences (the upper triangle of the similarity matrices). It measures whether
  the pruned model still *ranks* sentence pairs as the dense one does, which is what retrieval
  and semantic-similarity use cases depend on; it is blind to a rotation of the embedding space,
  which ``mean_cosine`` is not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from prunekit._checks import check_callable, check_module, check_number, check_sequence, got
from prunekit._utils import module_device
from prunekit.errors import InvalidArgumentError, InvalidValueError

__all__ = [
    "BatchEmbedding",
    "embed",
    "fidelity",
    "mean_pool",
    "sentence_batches",
    "sentence_embedding",
]

BatchEmbedding = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> [batch, dim]

# The Spearman correlation ranks every pair of sentences: n sentences make n(n-1)/2 pairs, and
# scipy's ranking holds several float64 copies of them (21,858 sentences: 239 M pairs, over
# 8 GB). Above this many sentences a random sample of them (seed 0) is ranked: 2,000 make
# 2.0 M pairs, about 100 MB of work arrays, and a correlation whose sampling error (about
# (1 - rho^2) / sqrt(pairs)) is far below the differences prunekit reports.
MAX_SPEARMAN_SENTENCES = 2000


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``hidden`` [batch, tokens, dim] over the tokens where ``attention_mask`` is set
    (all tokens when it is None)."""
    if hidden.dim() != 3:
        raise ValueError(
            f"mean pooling needs hidden states [batch, tokens, dim], got {list(hidden.shape)}"
        )
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)


def _last_hidden_state(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None and isinstance(output, (tuple, list)) and output:
        hidden = output[0]
    if not isinstance(hidden, torch.Tensor):
        raise ValueError(
            f"the model returned {type(output).__name__} without a last_hidden_state: "
            "sentence embeddings need an encoder (e.g. transformers.AutoModel, not a model with "
            "a task head), or pass your own embedding function"
        )
    return hidden


def sentence_embedding(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """Mean-pooled (over ``batch["attention_mask"]``), L2-normalised embeddings [batch, dim] of
    one tokenised batch (keyword arguments of the model). Differentiable: no ``no_grad`` here."""
    if not isinstance(batch, Mapping):
        raise ValueError(
            "sentence embeddings need a batch of keyword arguments (input_ids, attention_mask, "
            f"...), e.g. from prunekit.evaluate.embedding.sentence_batches; got "
            f"{type(batch).__name__}"
        )
    hidden = _last_hidden_state(model(**batch))
    return F.normalize(mean_pool(hidden, batch.get("attention_mask")), p=2, dim=-1)


def sentence_batches(
    tokenizer: Any,
    sentences: Sequence[str],
    batch_size: int = 32,
    max_length: int = 128,
) -> list[dict[str, torch.Tensor]]:
    """Tokenised batches (plain dicts of tensors, padded per batch, truncated to
    ``max_length`` tokens) of ``sentences``, in order: calibration data for the criteria of
    ``prunekit.criteria.head_importance`` and ``layer_importance``."""
    if isinstance(sentences, str):
        raise ValueError("sentences must be a sequence of strings, not one string")
    if batch_size < 1 or max_length < 1:
        raise ValueError(
            f"batch_size and max_length must be positive, got {batch_size} and {max_length}"
        )
    batches = []
    for start in range(0, len(sentences), batch_size):
        encoded = tokenizer(
            list(sentences[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        batches.append({k: v for k, v in encoded.items() if isinstance(v, torch.Tensor)})
    return batches


def _check_embed_arguments(
    model: Any, tokenizer: Any, sentences: Any, batch_size: Any, max_length: Any
) -> None:
    check_module(model)
    check_callable(tokenizer, "tokenizer", "a tokenizer such as AutoTokenizer.from_pretrained(...)")
    if isinstance(sentences, str):
        raise InvalidValueError(
            "sentences must be a sequence of strings, not one string: wrap it in a list, "
            f"got {got(sentences)}"
        )
    check_sequence(sentences, "sentences", "a sequence of strings such as ['a cat', 'a dog']")
    if not hasattr(sentences, "__getitem__"):
        raise InvalidArgumentError(
            f"sentences must be a sequence of strings (a list), got {got(sentences)}"
        )
    if len(sentences) == 0:
        raise InvalidValueError("no sentences to embed: sentences is empty")
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise InvalidArgumentError(
                f"sentences must be a sequence of strings, got {got(sentence)} at position {i}"
            )
    check_number(batch_size, "batch_size", low=1, integer=True)
    check_number(max_length, "max_length", low=1, integer=True)


def embed(
    model: nn.Module,
    tokenizer: Any,
    sentences: Sequence[str],
    batch_size: int = 32,
    max_length: int = 128,
) -> torch.Tensor:
    """Embeddings [len(sentences), dim] (float32, on the CPU) of ``sentences``: mean pooling over
    the attention mask of the last hidden state, then L2 normalisation.

    The model runs in eval mode under ``torch.inference_mode()`` on its own device; every
    submodule's train/eval flag is restored afterwards.
    """
    _check_embed_arguments(model, tokenizer, sentences, batch_size, max_length)
    device = module_device(model)
    previous = {m: m.training for m in model.modules()}
    model.eval()
    parts = []
    try:
        with torch.inference_mode():
            for batch in sentence_batches(tokenizer, sentences, batch_size, max_length):
                moved = {k: v.to(device) for k, v in batch.items()}
                parts.append(sentence_embedding(model, moved).float().cpu())
    finally:
        for m, was_training in previous.items():
            m.training = was_training
    return torch.cat(parts)


def _as_matrix(x: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    array = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.ndim != 2:
        raise ValueError(f"{what} embeddings must be [sentences, dim], got shape {array.shape}")
    return array.astype(np.float64)


def fidelity(
    dense_embeddings: torch.Tensor | np.ndarray,
    pruned_embeddings: torch.Tensor | np.ndarray,
    *,
    max_sentences: int = MAX_SPEARMAN_SENTENCES,
) -> dict[str, float]:
    """How faithfully ``pruned_embeddings`` reproduce ``dense_embeddings`` (same sentences, same
    order): ``{"mean_cosine": ..., "spearman": ..., "sentences": n, "spearman_sentences": m}``
    (see the module docstring). Embeddings need not be normalised; embeddings of different
    widths get a ``mean_cosine`` of NaN. Needs at least 3 sentences (2 pairs) for the Spearman
    correlation; a model whose pairwise similarities are all equal gets a Spearman of 0.

    Memory is bounded: ``mean_cosine`` uses every sentence, the Spearman correlation the pairs
    of at most ``max_sentences`` of them, drawn at random (seed 0) when there are more;
    ``spearman_sentences`` says how many."""
    dense = _as_matrix(dense_embeddings, "dense")
    pruned = _as_matrix(pruned_embeddings, "pruned")
    if dense.shape[0] != pruned.shape[0]:
        raise ValueError(
            f"the dense and pruned embeddings cover {dense.shape[0]} and {pruned.shape[0]} "
            "sentences: embed the same sentences with both models"
        )
    if dense.shape[0] < 3:
        raise ValueError(f"fidelity needs at least 3 sentences, got {dense.shape[0]}")

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    a, b = unit(dense), unit(pruned)
    # embeddings of different widths live in different spaces: only their rankings compare
    same_space = a.shape[1] == b.shape[1]
    result = {"mean_cosine": float(np.mean(np.sum(a * b, axis=1))) if same_space else np.nan}
    result["sentences"] = a.shape[0]
    limit = max(int(max_sentences), 3)
    if a.shape[0] > limit:
        chosen = np.sort(np.random.default_rng(0).choice(a.shape[0], limit, replace=False))
        a, b = a[chosen], b[chosen]
    result["spearman_sentences"] = a.shape[0]
    rows, cols = np.triu_indices(a.shape[0], k=1)
    sim_a = (a @ a.T)[rows, cols]
    sim_b = (b @ b.T)[rows, cols]
    if np.ptp(sim_a) == 0 or np.ptp(sim_b) == 0:
        result["spearman"] = 0.0
    else:
        result["spearman"] = float(spearmanr(sim_a, sim_b).statistic)
    return result
