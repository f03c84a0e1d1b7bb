"""Recover a pruned sentence-embedding model by distilling the dense model's embeddings.

Sentence-embedding models (all-MiniLM-L6-v2 and other sentence-transformers) are judged by
the *geometry* of their embeddings: which sentences are close to which. The loss therefore
has two terms on unlabelled sentences:

* ``1 - cos(e_student, e_teacher)`` per sentence: the embedding itself comes back;
* the mean squared difference of the two models' in-batch cosine-similarity matrices: the
  pairwise structure that similarity search and the Spearman fidelity measure depend on
  (the similarity-matrix matching of relational distillation, Park et al., "Relational
  Knowledge Distillation", CVPR 2019, applied to cosine similarities).

With ``hidden_weight > 0`` a third term matches the encoder's hidden states token by token
at every layer (TinyBERT's hidden-state loss, Jiao et al., Findings of EMNLP 2020): a pruned
layer is told what each of its tokens should become, not only what their mean should be,
which is far more signal per sentence. Each layer's squared error is divided by the
teacher's mean square there, so layers of different scale weigh the same. It needs a
Hugging Face style encoder (``output_hidden_states=True``) whose student and teacher have the
same number of layers and the same hidden size (head and FFN pruning keep both); the teacher
then runs alongside the student instead of once up front.

Training runs on the recovery engine (``recovery.finetune``, loss
``recovery.losses.EmbeddingDistillationLoss``) and stops after ``time_budget_s`` seconds or
``epochs`` passes, whichever comes first (the result says which); the clock includes the
teacher's passes. Without the hidden-state term the teacher's
embeddings of every batch are computed once up front (the teacher is never run again).
Distil on sentences *other* than those the fidelity is measured on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.evaluate.embedding import sentence_embedding
from prunekit.recovery.finetuning import FinetuneConfig, RecoveryError, finetune
from prunekit.recovery.losses import EmbeddingDistillationLoss, hidden_state_loss, relational_loss

__all__ = [
    "DEFAULT_LR",
    "EmbeddingDistillResult",
    "distill_embeddings",
    "hidden_state_loss",
    "relational_loss",
]

Embedding = Callable[[nn.Module, Any], torch.Tensor]
DEFAULT_LR = 2e-4  # measured on MiniLM at half its heads: 2e-4 > 1e-4 > 5e-5
_AMP = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class EmbeddingDistillResult:
    """``stopped_by``: ``"time"`` (the budget ended first) or ``"epochs"``."""

    steps: int
    epochs: float
    seconds: float
    first_loss: float
    last_loss: float
    stopped_by: str = "epochs"


def _hidden_states(model: nn.Module, batch: Any) -> tuple[torch.Tensor, ...]:
    if not isinstance(batch, Mapping) or "attention_mask" not in batch:
        raise RecoveryError(
            "hidden-state distillation needs tokenised batches with an attention_mask"
        )
    states = getattr(model(**batch, output_hidden_states=True), "hidden_states", None)
    if not states:
        raise RecoveryError(
            f"{type(model).__name__} returned no hidden_states for output_hidden_states=True; "
            "use hidden_weight=0 for this model"
        )
    return tuple(states)


class _Shuffled:
    """``(index, batch)`` pairs in a fresh random order each epoch (drawn from ``generator``,
    which the engine checkpoints like a DataLoader's)."""

    def __init__(self, batches: Sequence[Any], generator: torch.Generator) -> None:
        self.batches, self.generator = batches, generator

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        for i in torch.randperm(len(self.batches), generator=self.generator).tolist():
            yield i, self.batches[i]


def distill_embeddings(
    student: nn.Module,
    teacher: nn.Module,
    batches: Sequence[Any],
    *,
    epochs: int = 10,
    time_budget_s: float = 600.0,
    lr: float = DEFAULT_LR,
    relational_weight: float = 1.0,
    hidden_weight: float = 0.0,
    dropout: bool = False,
    train_embeddings: bool = False,
    cache_teacher: bool = False,
    autocast: torch.dtype | None = None,
    embedding_fn: Embedding = sentence_embedding,
    log: Callable[[str], None] = lambda _: None,
    step_hook: Callable[[int, int, float], object] | None = None,
) -> EmbeddingDistillResult:
    """Train ``student`` in place to reproduce ``teacher``'s embeddings of ``batches``
    (tokenised dicts, e.g. ``prunekit.evaluate.embedding.sentence_batches``); AdamW with a
    cosine learning-rate decay over the planned steps or the time budget, whichever is
    shorter (the engine's ``"cosine_time"`` schedule). ``hidden_weight`` weighs the
    hidden-state term (module docstring); it replaces ``embedding_fn`` by the mean-pooled last
    hidden state. The student trains in eval mode unless ``dropout``: it imitates a
    deterministic teacher, and dropout noise only hides that target (on MiniLM with half its
    heads the final loss halved without it). The input (word) embeddings stay frozen unless
    ``train_embeddings``: head and neuron pruning leaves them as they were, and in a small
    encoder they are most of the parameters (MiniLM-L6: 11.7 of 22.7 million), so updating
    them takes much of each step's time.

    ``cache_teacher`` (with ``hidden_weight``): run the teacher once over every batch up front
    and keep its hidden states (in float16, ``layers x tokens x hidden x 2`` bytes per
    batch) instead of running it at every step -- about a third of a step's time, so more
    epochs fit a time budget when the memory is there. The pass counts against the budget.

    ``autocast`` (``torch.bfloat16``, or ``torch.float16`` with a gradient scaler): run the
    forward passes of the student under ``torch.autocast``; the weights, the optimiser and the
    teacher's targets stay float32. Most of a step is matrix products, so on CPUs with
    bfloat16 instructions (AVX-512 BF16, AMX) more steps fit the time budget (AVX-512 BF16, 2
    threads: 1.25x the steps per second on the dense MiniLM, 1.07x on MiniLM without half its
    heads and half its FFN neurons, whose products are smaller).

    ``step_hook(epoch, step, loss)`` runs after every optimizer step (a sparsity schedule
    raising its masks, say)."""
    if not batches:
        raise RecoveryError("embedding distillation needs at least one batch of sentences")
    if epochs < 1 or time_budget_s <= 0 or lr <= 0:
        raise RecoveryError("epochs, time_budget_s and lr must be positive")
    criterion = EmbeddingDistillationLoss(relational_weight, hidden_weight)
    if autocast not in _AMP:
        raise RecoveryError(
            f"autocast must be torch.bfloat16, torch.float16 or None, not {autocast}"
        )
    teacher.eval()
    start = time.perf_counter()
    targets: list[Any] = []
    with torch.no_grad():
        if hidden_weight == 0:
            targets = [embedding_fn(teacher, b).detach() for b in batches]
        elif cache_teacher:
            targets = [tuple(h.half() for h in _hidden_states(teacher, b)) for b in batches]

    def forward(model: nn.Module, item: tuple[int, Any]) -> Any:
        if hidden_weight == 0:
            return embedding_fn(model, item[1])
        return _hidden_states(model, item[1])

    def loss(output: Any, item: tuple[int, Any], teacher_output: Any) -> torch.Tensor:
        if hidden_weight == 0:
            teacher_output = targets[item[0]]
        elif targets:  # the cache is float16; the targets are float32, as a running teacher's
            teacher_output = tuple(h.float() for h in targets[item[0]])
        return criterion(output, item[1], teacher_output)

    losses: list[float] = []

    def on_step(epoch: int, step: int, value: float) -> None:
        losses.append(value)
        if step_hook is not None:
            step_hook(epoch, step, value)

    frozen: set[int] = set()
    embeddings = getattr(student, "get_input_embeddings", None)
    if not train_embeddings and callable(embeddings) and isinstance(embeddings(), nn.Module):
        frozen = {id(p) for p in embeddings().parameters()}
    frozen_now = [p for p in student.parameters() if id(p) in frozen and p.requires_grad]
    config = FinetuneConfig(
        epochs=epochs, lr=lr, optimizer="adamw", weight_decay=0.01, schedule="cosine_time",
        max_seconds=max(1e-6, time_budget_s - (time.perf_counter() - start)),
        amp=_AMP[autocast], train_mode=dropout, seed=0,
    )  # fmt: skip
    for p in frozen_now:
        p.requires_grad_(False)
    try:
        result = finetune(
            student, _Shuffled(batches, torch.Generator().manual_seed(0)), config=config,
            teacher=teacher if hidden_weight and not targets else None,
            loss=loss, forward=forward, on_step=on_step, log=log,
        )  # fmt: skip
    finally:
        for p in frozen_now:
            p.requires_grad_(True)
    steps = len(losses)
    return EmbeddingDistillResult(
        steps, steps / len(batches), time.perf_counter() - start,
        losses[0] if losses else math.nan, losses[-1] if losses else math.nan,
        result.stopped_by,
    )  # fmt: skip
