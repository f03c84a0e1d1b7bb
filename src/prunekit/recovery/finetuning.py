"""The recovery engine: fine-tune a (pruned) model from a loader, with distillation,
checkpoints, best weights, early stopping and an honest time budget.

``finetune(model, train_loader, config=FinetuneConfig(...), teacher=dense_copy)`` trains any
``nn.Module``. By default batches are ``(inputs, labels)`` pairs, the model maps inputs to
logits (or an output with ``.logits``) and the loss is cross-entropy, mixed with logit
distillation from ``teacher`` (``recovery.losses.ClassificationLoss``); ``loss=`` and
``forward=`` plug in other tasks (segmentation, embedding distillation: ``recovery.losses``).
It runs on the CPU or a GPU (bf16 autocast where supported), and data-parallel under
``torchrun`` (``recovery.distributed``).

Checkpoints: with ``checkpoint_dir``, the full training state is written after *every* epoch
and when the clock stops a run (``last.pt``: model, optimizer, LR schedule, gradient scaler,
position, history, RNG states of torch / CUDA / Python / NumPy and of the loader's own
``torch.Generator``, the config, and a fingerprint of the model's tensor names and shapes),
atomically (``recovery._checkpoint``). Calling ``finetune`` again with the same directory
resumes where the last call stopped -- at the next epoch, or, after a time stop, at the next
step of the interrupted epoch (the epoch's data order is replayed from its saved RNG state);
after the last epoch (or an early stop) it returns at once with the stored history and the
final weights. Because RNG states and data order are restored, a run resumed at an epoch
boundary on the CPU gives bit-identical weights to an uninterrupted one (on a GPU, only as
deterministic as the kernels used).

Stops: after ``epochs``; after ``patience`` epochs without a better validation score
(``"early_stopping"``); or on the clock (``max_seconds``, checked after every step, also in
the middle of an epoch: ``"time"``). ``FinetuneResult.stopped_by`` says which.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._checks import check_device_present
from prunekit._utils import module_device
from prunekit.recovery._checkpoint import CheckpointError, RecoveryError

__all__ = [
    "CheckpointError",
    "EpochStats",
    "FinetuneConfig",
    "FinetuneResult",
    "RecoveryError",
    "finetune",
]

_logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("cosine", "constant", "cosine_time")
AMP_MODES = ("auto", "off", "bf16", "fp16")
STOPS = ("epochs", "time", "early_stopping")


def _number(value: Any, what: str, *, low: float, high: float = math.inf, strict: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = (value > low if strict else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if strict else f">= {low}"
        limit = "" if high == math.inf else f" and <= {high}"
        raise RecoveryError(f"{what} must be a number {bound}{limit}, got {value!r}")
    return float(value)


def _count(value: Any, what: str, *, optional: bool = False, zero: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        kind = "a non-negative" if zero else "a positive"
        none = " or None" if optional else ""
        raise RecoveryError(f"{what} must be {kind} integer{none}, got {value!r}")


def _choice(value: Any, what: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise RecoveryError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")


@dataclass(frozen=True)
class FinetuneConfig:
    """How ``finetune`` trains.

    ``optimizer``: ``"sgd"`` (with ``momentum``), ``"adamw"`` or ``"adam"`` (L2 penalty
    instead of decoupled decay); ``weight_decay`` applies to every trainable tensor.
    ``schedule``: ``"cosine"`` decays the learning rate from ``lr`` to 0 over all steps of all
    epochs, ``"constant"`` keeps it, ``"cosine_time"`` decays over whichever ends first, the
    planned steps or ``max_seconds`` (so a run the clock stops still ends at a small learning
    rate; the LR then depends on the clock, so such runs are not bit-reproducible, and a run
    the clock stopped is finished). All start with a linear warm-up over ``warmup_epochs``
    epochs (may be fractional; 0 disables). The LR changes every step.

    ``distill_alpha`` / ``distill_temperature``: see ``DistillationLoss``; used only by the
    default loss when a teacher is given (``distill_alpha=0`` then ignores it).
    ``max_steps_per_epoch`` cuts each epoch short (required for a loader without ``len``);
    ``val_max_batches`` limits validation. ``device``: where to train (``None``: wherever the
    model is). ``seed`` seeds torch, Python and NumPy at the start of a fresh run (not on
    resume, which restores the saved RNG states instead) and a ``DistributedSampler``.

    ``max_seconds``: the wall-clock budget of one ``finetune`` call (teacher passes,
    validation and checkpoints included), checked after every step; a call resumed after a
    time stop gets a budget of its own. ``grad_clip``: clip the global gradient norm to this.
    ``amp``: ``"auto"`` (bf16 autocast on a CUDA device that supports it, else off), ``"off"``,
    ``"bf16"`` (autocast, also on CPUs) or ``"fp16"`` (autocast with a gradient scaler); the
    weights and the optimizer stay float32, the teacher runs in float32. ``patience``: stop
    after this many epochs without a better validation score (needs ``val_loader`` or
    ``evaluate``). ``min_epochs``: epochs before this one are neither candidates for the best
    weights nor counted by ``patience`` (a pruning schedule still running). ``train_mode``:
    train with the model in train mode (dropout, batch-norm statistics); False keeps it in
    eval mode, e.g. a student imitating a deterministic teacher.
    """

    epochs: int = 10
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    distill_alpha: float = 0.7
    distill_temperature: float = 4.0
    max_steps_per_epoch: int | None = None
    val_max_batches: int | None = None
    device: str | None = None
    seed: int = 0
    max_seconds: float | None = None
    grad_clip: float | None = None
    amp: str = "auto"
    patience: int | None = None
    min_epochs: int = 0
    train_mode: bool = True

    def __post_init__(self) -> None:
        _count(self.epochs, "epochs")
        _number(self.lr, "lr", low=0, strict=True)
        _choice(self.optimizer, "optimizer", OPTIMIZERS)
        _number(self.momentum, "momentum", low=0, high=1, strict=False)
        _number(self.weight_decay, "weight_decay", low=0, strict=False)
        _choice(self.schedule, "schedule", SCHEDULES)
        _number(self.warmup_epochs, "warmup_epochs", low=0, high=self.epochs, strict=False)
        _number(self.distill_alpha, "distill_alpha", low=0, high=1, strict=False)
        _number(self.distill_temperature, "distill_temperature", low=0, strict=True)
        _count(self.max_steps_per_epoch, "max_steps_per_epoch", optional=True)
        _count(self.val_max_batches, "val_max_batches", optional=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise RecoveryError(f"seed must be an integer, got {self.seed!r}")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise RecoveryError(f"invalid device {self.device!r}: {exc}") from None
        if self.max_seconds is not None:
            _number(self.max_seconds, "max_seconds", low=0, strict=True)
        if self.grad_clip is not None:
            _number(self.grad_clip, "grad_clip", low=0, strict=True)
        _choice(self.amp, "amp", AMP_MODES)
        _count(self.patience, "patience", optional=True)
        _count(self.min_epochs, "min_epochs", zero=True)
        if not isinstance(self.train_mode, bool):
            raise RecoveryError(f"train_mode must be True or False, got {self.train_mode!r}")
        if self.schedule == "cosine_time" and self.max_seconds is None:
            raise RecoveryError(
                "schedule 'cosine_time' decays over the time budget: set max_seconds too"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneConfig:
        """The config of ``to_dict()``'s output; unknown keys are refused (by name)."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise RecoveryError(
                f"unknown FinetuneConfig setting(s): {', '.join(unknown)} (known: "
                f"{', '.join(known)})"
            )
        return cls(**dict(data))


@dataclass(frozen=True)
class EpochStats:
    """One finished epoch. ``train_loss``: mean training loss per sample (over all ranks when
    distributed). ``lr``: learning rate after the epoch's last step. ``val_top1`` /
    ``val_loss``: on ``val_loader`` (None without one). ``val_score``: what selects the best
    epoch: ``evaluate(model)`` if given, else ``val_top1``. ``seconds``: wall time of the
    epoch, validation included."""

    epoch: int
    train_loss: float
    steps: int
    lr: float
    val_top1: float | None = None
    val_loss: float | None = None
    val_score: float | None = None
    seconds: float = field(default=0.0, compare=False)  # wall time is not part of a result


@dataclass
class FinetuneResult:
    """``history``: every finished epoch, including those of earlier, interrupted calls.
    ``best_epoch``: the epoch with the highest ``val_score`` (None without validation), whose
    weights the model holds on return. ``resumed``: whether a checkpoint was picked up;
    ``start_epoch``: how many epochs it had already finished. ``stopped_by``: ``"epochs"``,
    ``"time"`` or ``"early_stopping"``. ``seconds``: wall time of this call; ``steps``:
    optimizer steps of this call."""

    history: list[EpochStats]
    best_epoch: int | None
    resumed: bool
    start_epoch: int = 0
    checkpoint: Path | None = None
    stopped_by: str = "epochs"
    seconds: float = 0.0
    steps: int = 0

    @property
    def epochs_run(self) -> int:
        """Epochs finished by this call (0 when everything was already done)."""
        return len(self.history) - self.start_epoch

    @property
    def best(self) -> EpochStats | None:
        if self.best_epoch is None:
            return None
        return self.history[self.best_epoch - 1]

    @property
    def final(self) -> EpochStats | None:
        return self.history[-1] if self.history else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the history (per epoch: epoch, train_loss, steps, lr, val_top1,
        val_loss, val_score, seconds), best_epoch, stopped_by, seconds, steps, resumed."""
        return {
            "history": [asdict(h) for h in self.history],
            "best_epoch": self.best_epoch,
            "stopped_by": self.stopped_by,
            "seconds": self.seconds,
            "steps": self.steps,
            "resumed": self.resumed,
        }


def finetune(
    model: nn.Module,
    train_loader: Iterable[Any],
    *,
    config: FinetuneConfig | None = None,
    teacher: nn.Module | None = None,
    val_loader: Iterable[Any] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    evaluate: Callable[[nn.Module], float] | None = None,
    on_step: Callable[[int, int, float], object] | None = None,
    log: Callable[[str], object] | None = None,
    loss: Callable[[Any, Any, Any], torch.Tensor] | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    eligible: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place on ``train_loader``'s batches (see the module docstring).

    ``teacher``: the dense model to distill from; it runs in eval mode under
    ``torch.no_grad`` in float32 and is never updated. Keep a copy made *before* pruning
    (``copy.deepcopy(model)``): the teacher must not be the model itself. Model and teacher
    are moved to ``config.device`` (and stay there).

    ``loss(student_output, batch, teacher_output_or_None) -> scalar``: the training loss
    (default: ``ClassificationLoss`` -- cross-entropy on the labels, with the config's
    distillation when a teacher is given). ``forward(model, batch) -> output``: how model and
    teacher are called (default: ``model(inputs)`` for an ``(inputs, labels)`` pair,
    ``model(**batch)`` for a mapping, ``model(batch)`` for a tensor). With a custom ``loss``
    the teacher runs whenever it is given; with the default, only when ``distill_alpha > 0``.

    Validation: after every epoch, top-1 accuracy on ``val_loader``
    (``prunekit.evaluate.evaluate_classification``) and/or ``evaluate(model)`` (called in eval
    mode under ``no_grad``; higher is better, it replaces top-1 as the selection metric). With
    either, the weights of the best epoch (the first, on ties) are restored at the end: the
    returned model is the best one seen, not necessarily the last. ``eligible()``: when it
    returns False at an epoch's end (a sparsity schedule still ramping), that epoch is recorded
    but never kept as the best.

    ``checkpoint_dir``: write a checkpoint after every epoch and on a time stop and, with
    ``resume=True``, continue from one found there; a checkpoint of another model or another
    config is refused with ``CheckpointError`` (``device`` and ``max_seconds`` may change).
    ``resume=False`` discards it. The best epoch's weights are kept there too.

    ``on_step(epoch, step, loss)`` runs after every optimizer step (epochs count from 1, steps
    from 0; an exception it raises stops training, the last checkpoint stays). It may prune
    the model physically: replaced parameters are noticed after it returns, and the optimizer
    (and DDP wrapper) are rebuilt on them. ``log`` receives one line per epoch and one saying
    what stopped training (default: this module's logger at INFO). The train/eval flags of
    every submodule of model and teacher are restored on return.
    """
    from prunekit.recovery import distributed
    from prunekit.recovery._engine import Run

    config = config or FinetuneConfig()
    if not isinstance(config, FinetuneConfig):
        raise RecoveryError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    say: Callable[[str], object] = log if log is not None else _logger.info
    if teacher is model:
        raise RecoveryError(
            "the teacher is the model being fine-tuned; distill from a copy made before "
            "pruning (teacher = copy.deepcopy(model))"
        )
    if config.patience is not None and val_loader is None and evaluate is None:
        raise RecoveryError(
            "patience (early stopping) needs a validation metric: pass val_loader or evaluate"
        )
    device = (check_device_present(config.device, "device") if config.device is not None
              else module_device(model))  # fmt: skip
    distributed.init_from_env(device)
    modes = {m: m.training for m in model.modules()}
    if teacher is not None:
        modes.update({m: m.training for m in teacher.modules()})
    try:
        run = Run.create(
            model, train_loader, config=config, device=device, checkpoint_dir=checkpoint_dir,
            teacher=teacher if (loss is not None or config.distill_alpha > 0) else None,
            loss=loss, forward=forward, say=say,
        )  # fmt: skip
        run.eligible = eligible
        run.prepare(resume)
        run.train(val_loader, evaluate, on_step)
    finally:
        for module, was_training in modes.items():
            module.training = was_training
    return run.result()
