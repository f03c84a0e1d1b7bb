"""Recover accuracy after structured pruning: distillation, resumable fine-tuning, rounds.

- ``DistillationLoss``: cross-entropy mixed with a softened imitation of the dense teacher
  (Hinton et al. 2015).
- ``finetune(model, train_loader, config=FinetuneConfig(...), teacher=..., val_loader=...,
  checkpoint_dir=...)``: a general fine-tuning loop (any classifier, DataLoaders, CPU or CUDA)
  that checkpoints after every epoch and resumes where it stopped.
- ``recovery.losses``: the engine's pluggable losses (classification with distillation,
  segmentation with Dice, embedding / hidden-state distillation).
- ``recovery.distributed``: the same engine under ``torchrun`` (DistributedDataParallel).
- For loops of one's own: ``Distiller`` (the teacher as a loss) and ``IterativePruning``
  (prune, rebuild the optimizer on the new tensors, fine-tune, repeat), with
  ``StructuredPruneSteps`` for ``prunekit.pruning.prune`` at a growing ratio.

``prunekit.mcu.train.fit`` and ``recovery.embedding_distill.distill_embeddings`` are thin
callers of ``finetune``: one engine, one schedule, one checkpoint format.
"""

from __future__ import annotations

from prunekit.recovery.callback import (
    Distiller,
    IterativePruning,
    PruningRound,
    StructuredPruneSteps,
    count_parameters,
)
from prunekit.recovery.distill import DistillationLoss, logits_of
from prunekit.recovery.finetuning import (
    CheckpointError,
    EpochStats,
    FinetuneConfig,
    FinetuneResult,
    RecoveryError,
    finetune,
)
from prunekit.recovery.losses import (
    ClassificationLoss,
    EmbeddingDistillationLoss,
    SegmentationLoss,
    dice_loss,
)

__all__ = [
    "CheckpointError",
    "ClassificationLoss",
    "DistillationLoss",
    "Distiller",
    "EmbeddingDistillationLoss",
    "EpochStats",
    "FinetuneConfig",
    "FinetuneResult",
    "IterativePruning",
    "PruningRound",
    "RecoveryError",
    "SegmentationLoss",
    "StructuredPruneSteps",
    "count_parameters",
    "dice_loss",
    "finetune",
    "logits_of",
]
