"""A small, fast training loop for in-memory classification data (fine-tuning after pruning).

It is what ``prunekit demo`` and ``prunekit mcu`` use between pruning steps; users with their own
loop call ``GradualPruner.step()`` from it instead. Features that matter for compression:
hooks after every optimizer step (masks, weight sharing), distillation from the dense model
(Hinton et al. 2015), a cosine learning-rate schedule, and early stopping on the validation
split that never stops (or rolls back) before ``min_epochs`` -- rolling back into the middle of a
pruning schedule would restore weights that the schedule has already removed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.mcu.datasets import Splits


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 4  # epochs without a better validation accuracy before stopping
    min_epochs: int = 0  # no early stop and no roll-back before this many epochs
    distill_weight: float = 0.0  # share of the loss that imitates the teacher (0 disables)
    distill_temperature: float = 4.0
    # Translate each training image by up to this many pixels (zero fill), a fresh draw per
    # sample and step; the teacher sees the same shifted image. With distillation this is
    # "function matching" (Beyer et al. 2022): the student imitates the teacher on inputs the
    # training set does not hold. 0 disables; needs ``Splits.image_shape``.
    shift_pixels: int = 0
    seed: int = 0


@dataclass
class FitResult:
    best_val_accuracy: float
    epochs_run: int
    val_history: list[float] = field(default_factory=list)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (put in eval mode) on in-memory tensors."""
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(1) == y[start : start + batch_size]).sum())
    return correct / max(1, len(y))


def random_shift(
    x: torch.Tensor, image_shape: tuple[int, ...], pixels: int, generator: torch.Generator
) -> torch.Tensor:
    """Flat images ``x`` [n, h*w] each moved by a random (dy, dx) in [-pixels, pixels]."""
    if pixels <= 0:
        return x
    if len(image_shape) != 2 or image_shape[0] * image_shape[1] != x.shape[1]:
        raise ValueError(
            f"shift augmentation needs flat 2-D images; got image shape {image_shape} for "
            f"{x.shape[1]} features"
        )
    height, width = image_shape
    n = x.shape[0]
    padded = F.pad(x.view(n, height, width), (pixels, pixels, pixels, pixels))
    dy = torch.randint(0, 2 * pixels + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * pixels + 1, (n, 1), generator=generator)
    rows = (dy + torch.arange(height))[:, :, None]
    cols = (dx + torch.arange(width))[:, None, :]
    return padded[torch.arange(n)[:, None, None], rows, cols].reshape(n, height * width)


def _loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    config: TrainConfig,
) -> torch.Tensor:
    hard = F.cross_entropy(logits, labels)
    if teacher_logits is None or config.distill_weight <= 0:
        return hard
    t = config.distill_temperature
    soft = F.kl_div(
        F.log_softmax(logits / t, dim=1),
        F.softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
    )
    # t^2 keeps the soft term's gradient scale independent of the temperature (Hinton et al.).
    return (1 - config.distill_weight) * hard + config.distill_weight * soft * t * t


def fit(
    model: nn.Module,
    data: Splits,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    after_step: Sequence[Callable[[], object]] = (),
    after_epoch: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``data.train_*``, early-stopping on ``data.val_*``.

    ``after_step`` callables run after every optimizer step (e.g. ``GradualPruner.step``, a
    weight-sharing projection); masks that must survive steps are enforced by them. At the end the
    weights with the best validation accuracy seen after ``min_epochs`` are restored.
    """
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(data.train_y) / config.batch_size)
    total_steps = max(1, config.epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    if teacher is not None:
        teacher.eval()
    best_accuracy, best_state, stale = -1.0, None, 0
    history: list[float] = []
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(data.train_y), generator=generator)
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            x, y = data.train_x[batch], data.train_y[batch]
            x = random_shift(x, data.image_shape, config.shift_pixels, generator)
            teacher_logits = None
            if teacher is not None and config.distill_weight > 0:
                with torch.no_grad():
                    teacher_logits = teacher(x)
            loss = _loss(model(x), y, teacher_logits, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            for hook in after_step:
                hook()
        val = accuracy(model, data.val_x, data.val_y)
        history.append(val)
        if after_epoch is not None:
            after_epoch(epoch, val)
        if epoch < config.min_epochs:
            continue
        if val > best_accuracy:
            best_accuracy, best_state, stale = val, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(best_accuracy, epoch, history)
