"""Recover accuracy after structured pruning: distillation, resumable fine-tuning, rounds.

- ``DistillationLoss``: cross-entropy mixed with a softened imitation of the dense teacher
  (Hinton et al. 2015).
- ``finetune(model, train_loader, config=FinetuneConfig(...), teacher=..., val_loader=...,
  checkpoint_dir=...)``: a general fine-tuning loop (any classifier, DataLoaders, CPU or CUDA)
  that checkpoints after every epoch and resumes where it stopped.
- For loops of one's own: ``Distiller`` (the teacher as a loss) and ``IterativePruning``
  (prune, rebuild the optimizer on the new tensors, fine-tune, repeat), with
  ``StructuredPruneSteps`` for ``prunekit.pruning.prune`` at a growing ratio.

``prunekit.mcu.train`` is the small in-memory loop of the MCU pipeline; this package is the
general one.
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

__all__ = [
    "CheckpointError",
    "DistillationLoss",
    "Distiller",
    "EpochStats",
    "FinetuneConfig",
    "FinetuneResult",
    "IterativePruning",
    "PruningRound",
    "RecoveryError",
    "StructuredPruneSteps",
    "count_parameters",
    "finetune",
    "logits_of",
]
