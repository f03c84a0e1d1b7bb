"""``pk.recover_``: get a pruned model's accuracy back, in place, with the recovery engine.

Training uses only ``data``'s fit part: a seeded ``validation`` share of it picks the best
epoch (and stops early with ``patience``); the eval part is never seen, so ``pk.evaluate``
afterwards reports held-out accuracy. With a ``teacher`` (the dense model) the loss adds
distillation of its logits at ``kd_temperature`` to the task loss (labels when the data has
them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.api._config import VerbConfig, choice, number, positive_int


@dataclass(frozen=True)
class RecoverConfig(VerbConfig):
    """How ``recover_`` trains. ``epochs`` bounds the run and sets the LR schedule;
    ``seconds`` (optional) stops it on the clock first. ``kd_alpha``: the weight of the
    distillation term (0: task loss only; ignored without a teacher)."""

    epochs: int = 2
    seconds: float | None = None
    lr: float = 0.01
    optimizer: str = "sgd"
    batch_size: int = 64
    weight_decay: float = 1e-4
    kd_temperature: float = 4.0
    kd_alpha: float = 0.7
    validation: float = 0.1
    patience: int | None = None
    grad_clip: float | None = None
    amp: str = "auto"
    warmup_epochs: float = 0.0
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        positive_int(self.epochs, "epochs")
        number(self.seconds, "seconds", low=0, strict=True, optional=True)
        number(self.lr, "lr", low=0, strict=True)
        choice(self.optimizer, "optimizer", ("sgd", "adamw"))
        positive_int(self.batch_size, "batch_size")
        number(self.weight_decay, "weight_decay", low=0)
        number(self.kd_temperature, "kd_temperature", low=0, strict=True)
        number(self.kd_alpha, "kd_alpha", low=0, high=1)
        number(self.validation, "validation", low=0, high=0.5, strict=True)
        positive_int(self.patience, "patience", optional=True)
        number(self.grad_clip, "grad_clip", low=0, strict=True, optional=True)
        choice(self.amp, "amp", ("auto", "off", "bf16", "fp16"))
        number(self.warmup_epochs, "warmup_epochs", low=0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            from prunekit.api._config import ConfigError

            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

    def engine_config(self, distill: bool) -> Any:
        from prunekit.recovery.finetuning import FinetuneConfig

        return FinetuneConfig(
            epochs=self.epochs,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            warmup_epochs=self.warmup_epochs,
            distill_alpha=self.kd_alpha if distill else 0.0,
            distill_temperature=self.kd_temperature,
            device=self.device,
            seed=self.seed,
            max_seconds=self.seconds,
            # with a clock, the LR decays over whichever ends first: the epochs or the time
            schedule="cosine_time" if self.seconds is not None else "cosine",
            grad_clip=self.grad_clip,
            amp=self.amp,
            patience=self.patience,
        )


def check_teacher(student: nn.Module, teacher: nn.Module, example: Any) -> None:
    """The teacher must answer the student's inputs with outputs of the student's shape."""
    from prunekit.errors import DataError
    from prunekit.inputs import as_example_inputs

    example = as_example_inputs(example)

    def shape(model: nn.Module) -> list[int]:
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = example.call(model)
        except Exception as exc:
            raise DataError(f"the teacher does not run on the student's inputs: {exc}") from None
        finally:
            model.train(was)
        if isinstance(out, dict) and "out" in out:
            out = out["out"]
        out = getattr(out, "logits", out)
        return list(out.shape) if isinstance(out, torch.Tensor) else []

    s, t = shape(student), shape(teacher)
    if s != t:
        raise DataError(
            f"the teacher's outputs {t} do not match the student's {s}: distil from the dense "
            "model this one was pruned from"
        )


def recover_(
    model: nn.Module,
    data: Any,
    config: RecoverConfig | None = None,
    *,
    teacher: nn.Module | None = None,
    example: Any = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    record: dict[str, Any] | None = None,
    on_step: Any = None,
    log: Any = None,
    eligible: Any = None,
) -> None:
    """Fine-tune ``model`` in place on ``data``'s fit part (returns None; see the module
    docstring). ``example``: a model input, to shape the data (defaults to one data item).
    ``checkpoint_dir``: checkpoints after every epoch (and on the clock's stop);
    ``resume=True`` continues from them. ``record`` is filled with the history, what stopped
    training, the split and the validation metric per epoch. ``eligible()`` False at an
    epoch's end keeps that epoch from being chosen as the best (a schedule still running)."""
    from prunekit._checks import check_module
    from prunekit.api.data import as_data
    from prunekit.errors import DataError
    from prunekit.evaluate import evaluate_classification
    from prunekit.recovery.finetuning import finetune

    check_module(model)
    config = config or RecoverConfig()
    if not isinstance(config, RecoverConfig):
        from prunekit.api._config import ConfigError

        raise ConfigError(f"recover_ needs a RecoverConfig, got {type(config).__name__}")
    resolved = as_data(data, example=example, seed=config.seed)
    if resolved.task == "embedding":
        raise DataError(
            "sentence encoders are recovered by embedding distillation: use prunekit prune "
            "--distill-seconds (recovery.embedding_distill)"
        )
    if example is None:
        example = resolved.eval[0][0].unsqueeze(0)
    if teacher is not None:
        check_teacher(model, teacher, example)
    train_part, val_part = resolved.fit_and_validation(config.validation, config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(train_part, batch_size=config.batch_size, shuffle=True,
                                         generator=generator, drop_last=len(train_part) > config.batch_size)  # fmt: skip
    val_loader = torch.utils.data.DataLoader(val_part, batch_size=256)
    if resolved.task == "segmentation":
        from prunekit.evaluate.segmentation import evaluate_segmentation
        from prunekit.recovery.losses import SegmentationLoss

        loss: Any = SegmentationLoss(temperature=config.kd_temperature,
                                     alpha=config.kd_alpha if teacher else 0.0)  # fmt: skip

        def score(m: nn.Module) -> float:
            return evaluate_segmentation(m, val_loader).miou

        metric = "miou"
    else:
        loss = None

        def score(m: nn.Module) -> float:
            return evaluate_classification(m, val_loader).top1

        metric = "top1"
    result = finetune(
        model,
        loader,
        config=config.engine_config(distill=teacher is not None),
        teacher=teacher,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        evaluate=score,
        on_step=on_step,
        log=log,
        loss=loss,
        eligible=eligible,
    )
    model.eval()
    if record is not None:
        record.update(
            {
                "config": config.to_dict(),
                "teacher": teacher is not None,
                "data": resolved.to_dict(),
                "validation": {
                    "samples": len(val_part),
                    "metric": metric,
                    "carved_from": "the fit part",
                },
                "train_samples": len(train_part),
                **result.to_dict(),
            }
        )
