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

Training stops after ``time_budget_s`` seconds or ``epochs`` passes, whichever comes first;
the clock includes the teacher's passes. Without the hidden-state term the teacher's
embeddings of every batch are computed once up front (the teacher is never run again).
Distil on sentences *other* than those the fidelity is measured on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.evaluate.embedding import mean_pool, sentence_embedding
from prunekit.recovery.finetuning import RecoveryError

Embedding = Callable[[nn.Module, Any], torch.Tensor]
DEFAULT_LR = 2e-4  # measured on MiniLM at half its heads: 2e-4 > 1e-4 > 5e-5


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


def hidden_state_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean over layers of ``sum((s - t)^2) / sum(t^2)`` over the real (unpadded) tokens."""
    if len(student) != len(teacher):
        raise RecoveryError(
            f"hidden-state distillation needs as many layers in the student as in the teacher "
            f"({len(student)} against {len(teacher)}); use hidden_weight=0 after dropping layers"
        )
    mask = attention_mask.unsqueeze(-1).to(student[0].dtype)
    terms = []
    for s, t in zip(student, teacher, strict=True):
        if s.shape != t.shape:
            raise RecoveryError(
                f"hidden states of shape {list(s.shape)} cannot be matched to the teacher's "
                f"{list(t.shape)}"
            )
        terms.append(((s - t).pow(2) * mask).sum() / (t.pow(2) * mask).sum().clamp_min(1e-12))
    return torch.stack(terms).mean()


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
) -> EmbeddingDistillResult:
    """Train ``student`` in place to reproduce ``teacher``'s embeddings of ``batches``
    (tokenised dicts, e.g. ``prunekit.evaluate.embedding.sentence_batches``); AdamW with a
    cosine learning-rate decay over the planned steps or the time budget, whichever is
    shorter. ``hidden_weight`` weighs the hidden-state term (module docstring); it replaces
    ``embedding_fn`` by the mean-pooled last hidden state. The student trains in eval mode
    unless ``dropout``: it imitates a deterministic teacher, and dropout noise only hides that
    target (on MiniLM with half its heads the final loss halved without it). The input
    (word) embeddings stay frozen unless ``train_embeddings``: head and neuron pruning leaves
    them as they were, and in a small encoder they are most of the parameters (MiniLM-L6:
    11.7 of 22.7 million), so updating them takes much of each step's time.

    ``cache_teacher`` (with ``hidden_weight``): run the teacher once over every batch up front
    and keep its hidden states (in float16, ``layers x tokens x hidden x 2`` bytes per
    batch) instead of running it at every step -- about a third of a step's time, so more
    epochs fit a time budget when the memory is there. The pass counts against the budget.

    ``autocast`` (``torch.bfloat16``, or ``torch.float16`` on CUDA): run the forward passes
    of the student under ``torch.autocast``; the weights, the optimiser and the teacher's
    targets stay float32. Most of a step is
    matrix products, so on CPUs with bfloat16 instructions (AVX-512 BF16, AMX) more steps fit
    the time budget (AVX-512 BF16, 2 threads: 1.25x the steps per second on the dense MiniLM,
    1.07x on MiniLM without half its heads and half its FFN neurons, whose products are
    smaller)."""
    if not batches:
        raise RecoveryError("embedding distillation needs at least one batch of sentences")
    if epochs < 1 or time_budget_s <= 0 or lr <= 0:
        raise RecoveryError("epochs, time_budget_s and lr must be positive")
    if hidden_weight < 0:
        raise RecoveryError(f"hidden_weight must be >= 0, got {hidden_weight}")
    if autocast not in (None, torch.bfloat16, torch.float16):
        raise RecoveryError(
            f"autocast must be torch.bfloat16, torch.float16 or None, not {autocast}"
        )
    teacher.eval()
    start = time.perf_counter()
    targets: list[torch.Tensor] = []
    cached: list[tuple[torch.Tensor, ...]] = []
    with torch.no_grad():
        if hidden_weight == 0:
            targets = [embedding_fn(teacher, b).detach() for b in batches]
        elif cache_teacher:
            cached = [tuple(h.half() for h in _hidden_states(teacher, b)) for b in batches]

    def loss_of(batch: Any, index: int) -> torch.Tensor:
        if hidden_weight == 0:
            return relational_loss(embedding_fn(student, batch), targets[index], relational_weight)
        if cached:
            want = tuple(h.float() for h in cached[index])
        else:  # the targets stay float32 under ``autocast``, as cached ones are
            with torch.no_grad(), torch.autocast(device, enabled=False):
                want = _hidden_states(teacher, batch)
        got = _hidden_states(student, batch)
        mask = batch["attention_mask"]
        pooled = relational_loss(mean_pool(got[-1], mask), mean_pool(want[-1], mask),
                                 relational_weight)  # fmt: skip
        return pooled + hidden_weight * hidden_state_loss(got, want, mask)

    total = epochs * len(batches)
    frozen: set[int] = set()
    embeddings = getattr(student, "get_input_embeddings", None)
    if not train_embeddings and callable(embeddings) and isinstance(embeddings(), nn.Module):
        frozen = {id(p) for p in embeddings().parameters()}
    trained = [p for p in student.parameters() if p.requires_grad and id(p) not in frozen]
    frozen_now = [p for p in student.parameters() if id(p) in frozen and p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.01)

    def progress(step: int) -> float:
        # The decay follows whichever ends first, the planned steps or the time budget: a run
        # the clock stops must still reach a small learning rate, not end at full height.
        return min(1.0, max(step / total, (time.perf_counter() - start) / time_budget_s))

    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * progress(step)))
    )
    generator = torch.Generator().manual_seed(0)
    device = trained[0].device.type if trained else "cpu"
    was_training = student.training
    # eval() switches off every dropout, including attention-probability dropout that
    # Hugging Face applies through the attention module's own training flag.
    student.train(dropout)
    steps, first, last = 0, math.nan, math.nan
    for p in frozen_now:
        p.requires_grad_(False)
    try:
        for epoch in range(epochs):
            for i in torch.randperm(len(batches), generator=generator).tolist():
                with torch.autocast(device, dtype=autocast or torch.float32,
                                    enabled=autocast is not None):  # fmt: skip
                    loss = loss_of(batches[i], i)
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
        for p in frozen_now:
            p.requires_grad_(True)
    return EmbeddingDistillResult(steps, steps / len(batches), time.perf_counter() - start,
                                  first, last)  # fmt: skip
