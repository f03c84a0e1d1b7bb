"""Recover a pruned sentence-embedding model by distilling the dense model's embeddings.

Sentence-embedding models (all-MiniLM-L6-v2 and other sentence-transformers) are judged by
the *geometry* of their embeddings: which sentences are close to which. The loss therefore
has two terms on unlabelled sentences:

* ``1 - cos(e_student, e_teacher)`` per sentence: the embedding itself comes back;
* the mean squared difference of the two models' in-batch cosine-similarity matrices: the
  pairwise structure that similarity search and the Spearman fidelity measure depend on
  (the similarity-matrix matching of relational distillation, Park et al., "Relational
  Knowledge Distillation", CVPR 2019, applied to cosine similarities).

Training stops after ``time_budget_s`` seconds or ``epochs`` passes, whichever comes first, and
the teacher's embeddings of every batch are computed once up front (the teacher is never run
again). Distil on sentences *other* than those the fidelity is measured on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.evaluate.embedding import sentence_embedding
from prunekit.recovery.finetuning import RecoveryError

Embedding = Callable[[nn.Module, Any], torch.Tensor]


@dataclass
class EmbeddingDistillResult:
    steps: int
    epochs: float
    seconds: float
    first_loss: float
    last_loss: float


def relational_loss(
    student: torch.Tensor, teacher: torch.Tensor, weight: float = 1.0
) -> torch.Tensor:
    """``mean(1 - cos) + weight * mean((S_student - S_teacher)^2)`` over a batch of embeddings,
    ``S`` the in-batch cosine-similarity matrices."""
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher, dim=-1)
    pointwise = (1 - (s * t).sum(-1)).mean()
    relational = (s @ s.T - t @ t.T).pow(2).mean()
    return pointwise + weight * relational


def distill_embeddings(
    student: nn.Module,
    teacher: nn.Module,
    batches: Sequence[Any],
    *,
    epochs: int = 10,
    time_budget_s: float = 600.0,
    lr: float = 5e-5,
    relational_weight: float = 1.0,
    embedding_fn: Embedding = sentence_embedding,
    log: Callable[[str], None] = lambda _: None,
) -> EmbeddingDistillResult:
    """Train ``student`` in place to reproduce ``teacher``'s embeddings of ``batches``
    (tokenised dicts, e.g. ``prunekit.evaluate.embedding.sentence_batches``); AdamW with a
    cosine learning-rate decay over the planned steps."""
    if not batches:
        raise RecoveryError("embedding distillation needs at least one batch of sentences")
    if epochs < 1 or time_budget_s <= 0 or lr <= 0:
        raise RecoveryError("epochs, time_budget_s and lr must be positive")
    teacher.eval()
    with torch.no_grad():
        targets = [embedding_fn(teacher, b).detach() for b in batches]
    total = epochs * len(batches)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )
    generator = torch.Generator().manual_seed(0)
    was_training = student.training
    student.train()
    start = time.perf_counter()
    steps, first, last = 0, math.nan, math.nan
    try:
        for epoch in range(epochs):
            for i in torch.randperm(len(batches), generator=generator).tolist():
                loss = relational_loss(embedding_fn(student, batches[i]), targets[i],
                                       relational_weight)  # fmt: skip
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                steps += 1
                last = float(loss.detach())
                first = last if steps == 1 else first
                if time.perf_counter() - start > time_budget_s:
                    break
            else:
                log(f"distillation epoch {epoch + 1}: loss {last:.4f}")
                continue
            log(f"distillation stopped at the time budget ({time_budget_s:g} s): loss {last:.4f}")
            break
    finally:
        student.train(was_training)
    return EmbeddingDistillResult(steps, steps / len(batches), time.perf_counter() - start,
                                  first, last)  # fmt: skip
