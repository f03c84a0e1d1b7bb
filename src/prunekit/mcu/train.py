"""Training on in-memory classification data (fine-tuning after pruning), on the recovery engine.

It is what ``prunekit demo`` and ``prunekit mcu`` use between pruning steps; users with their own
loop call ``GradualPruner.step()`` from it instead. ``fit`` is a thin caller of
``prunekit.recovery.finetune`` (one engine, one schedule): it adds in-memory batches with
random shifts, and maps ``TrainConfig`` onto ``FinetuneConfig``. Features that matter for
compression: hooks after every optimizer step (masks, weight sharing), distillation from the
dense model (Hinton et al. 2015), a cosine learning-rate schedule, and early stopping on the
validation split that never stops (or rolls back) before ``min_epochs`` -- rolling back into
the middle of a pruning schedule would restore weights that the schedule has already removed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.mcu.datasets import Splits
from prunekit.recovery.finetuning import FinetuneConfig, finetune


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


class ShiftedBatches:
    """The training split as shuffled mini-batches, one epoch per iteration: a fresh order and
    fresh shifts (``random_shift``) each time, all drawn from ``generator`` (which the engine
    saves and restores with its checkpoints)."""

    def __init__(self, data: Splits, config: TrainConfig, generator: torch.Generator) -> None:
        self.data, self.config, self.generator = data, config, generator

    def __len__(self) -> int:
        return math.ceil(len(self.data.train_y) / self.config.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data, size = self.data, self.config.batch_size
        order = torch.randperm(len(data.train_y), generator=self.generator)
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            x = random_shift(data.train_x[batch], data.image_shape, self.config.shift_pixels,
                             self.generator)  # fmt: skip
            yield x, data.train_y[batch]


def engine_config(config: TrainConfig) -> FinetuneConfig:
    """``config`` as the recovery engine's settings: Adam, cosine decay over all steps, no
    warm-up, distillation weight and temperature, patience and ``min_epochs`` as given."""
    return FinetuneConfig(
        epochs=config.epochs, lr=config.lr, optimizer="adam", weight_decay=config.weight_decay,
        schedule="cosine", distill_alpha=config.distill_weight,
        distill_temperature=config.distill_temperature, seed=config.seed,
        patience=config.patience, min_epochs=config.min_epochs, amp="off",
    )  # fmt: skip


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
    epochs_seen: list[int] = []

    def validate(m: nn.Module) -> float:
        val = accuracy(m, data.val_x, data.val_y)
        epochs_seen.append(len(epochs_seen) + 1)
        if after_epoch is not None:
            after_epoch(epochs_seen[-1], val)
        return val

    def hooks(epoch: int, step: int, loss: float) -> None:
        for hook in after_step:
            hook()

    batches = ShiftedBatches(data, config, torch.Generator().manual_seed(config.seed))
    result = finetune(
        model, batches, config=engine_config(config), evaluate=validate,
        teacher=teacher if config.distill_weight > 0 else None,
        on_step=hooks if after_step else None, log=lambda _: None,
    )  # fmt: skip
    model.eval()
    best = result.best
    history = [h.val_score for h in result.history if h.val_score is not None]
    return FitResult(best.val_score if best and best.val_score is not None else -1.0,
                     len(result.history), history)  # fmt: skip
