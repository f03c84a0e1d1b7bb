"""Recovery of a pipeline's pruned stages before their final metrics (``recover:`` in the file).

A stage's model may be a detector, a segmenter, a depth net or anything else, so recovery does
not use a task loss: the pruned model imitates its dense model's outputs on the stage's fit
images (every output tensor, each normalised by the dense output's variance so that a box
regression head and a heat map weigh alike). That needs no labels and is the distillation
part of the front door's recovery engine (``recovery.finetuning.finetune``), which also gives
the schedule, the clock and the best epoch. The best epoch is chosen on a validation share
carved from the fit part, by the stage's own metric (agreement with the dense outputs when it
has none); the eval part, where the final metrics are measured, is never seen.

Planned and uniform pipelines get the same recovery, so their comparison stays fair.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from prunekit._checks import check_number
from prunekit.errors import InvalidArgumentError, InvalidValueError


class PipelineRecoveryError(InvalidValueError):
    """A ``recover:`` setting of a pipeline file that cannot be used."""


@dataclass(frozen=True)
class RecoverSettings:
    """A checked ``recover:`` mapping: train for ``epochs`` and/or ``seconds`` (at least one)
    at ``lr`` in batches of ``batch_size`` on the first ``samples`` fit images (all: None),
    choosing the best epoch on a ``validation`` share of them drawn with ``seed``."""

    epochs: int | None = None
    seconds: float | None = None
    lr: float = 1e-3
    batch_size: int = 16
    samples: int | None = None
    validation: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs is None and self.seconds is None:
            raise InvalidValueError("give epochs:, seconds: or both")
        for name in ("epochs", "batch_size", "samples"):
            if getattr(self, name) is not None:
                check_number(getattr(self, name), name, low=1, integer=True)
        if self.seconds is not None:
            check_number(self.seconds, "seconds", low=0, low_open=True)
        check_number(self.lr, "lr", low=0, low_open=True)
        check_number(self.validation, "validation", low=0, high=1, low_open=True, high_open=True)
        check_number(self.seed, "seed", integer=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECOVER_KEYS = tuple(f.name for f in fields(RecoverSettings))


def parse_recover(
    value: Any, where: str, error: type[Exception] = PipelineRecoveryError
) -> RecoverSettings | None:
    """The checked ``recover:`` setting (None: no recovery); ``error``s name ``where``."""
    if value is None or value is False or isinstance(value, RecoverSettings):
        return value or None
    if not isinstance(value, dict):
        raise error(f"{where}: recover: expected a mapping ({', '.join(RECOVER_KEYS)}) or false")
    unknown = sorted(set(value) - set(RECOVER_KEYS))
    if unknown:
        raise error(f"{where}: recover: unknown key {unknown[0]!r}; use {', '.join(RECOVER_KEYS)}")
    try:
        return RecoverSettings(**value)
    except (InvalidArgumentError, InvalidValueError) as exc:
        raise error(f"{where}: recover: {exc}") from None


class OutputDistillation:
    """``loss(student_output, batch, teacher_output)``: the mean over output tensors of the
    squared error to the teacher's, divided by the teacher tensor's variance."""

    def __call__(self, student: Any, batch: Any, teacher: Any) -> Tensor:
        from prunekit.inputs import flatten_tensors

        mine, theirs = flatten_tensors(student), flatten_tensors(teacher)
        if len(mine) != len(theirs) or not mine:
            raise PipelineRecoveryError(f"the pruned model returns {len(mine)} tensors and the "
                                        f"dense model {len(theirs)}; cannot distil")  # fmt: skip
        terms = [((s.float() - t.float()) ** 2).mean() / (t.float().var() + 1e-6)
                 for s, t in zip(mine, theirs, strict=True) if t.is_floating_point()]  # fmt: skip
        return torch.stack(terms).mean()


def pruned(model: nn.Module, dense: nn.Module) -> bool:
    """Whether ``model`` lost parameters against ``dense`` (an unpruned stage is not
    recovered: distillation could only move it away from the dense model it equals)."""
    return sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in dense.parameters())


def recover_stage(
    model: nn.Module,
    dense: nn.Module,
    data: Any,
    metric: Any,
    settings: RecoverSettings,
    device: str,
    log: Callable[[str], object] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place to imitate ``dense`` on ``data``'s fit part; returns what
    ran (steps, seconds, what stopped it, the validation share, its score before training and
    at the best epoch, for a lower-is-better metric negated, and the distillation loss on it
    before and after: ``imitation_before``, ``imitation_after``)."""
    from prunekit.data.specs import seeded_split
    from prunekit.evaluate.tasks import agreement
    from prunekit.recovery.finetuning import FinetuneConfig, finetune

    seed = settings.seed
    fit = data.fit
    count = min(settings.samples or len(fit), len(fit))
    items = [fit[i] for i in range(count)]
    train_items, val_items = seeded_split(items, settings.validation, seed,
                                          "the stage's fit part")  # fmt: skip
    images = torch.stack([x for x, _ in train_items])
    val_images = torch.stack([x for x, _ in val_items])
    generator = torch.Generator().manual_seed(seed)
    batch = settings.batch_size
    # a list of image tensors: the loader's batches are image tensors, the model's input
    loader: torch.utils.data.DataLoader[Tensor] = torch.utils.data.DataLoader(
        list(images),  # type: ignore[arg-type]
        batch_size=batch,
        shuffle=True,
        generator=generator,
        drop_last=len(images) > batch,
    )
    with torch.no_grad():
        dense_full = dense.eval()(val_images)
        dense_val = first_output(dense_full)

    def imitation(m: nn.Module) -> float:
        """The distillation loss on the validation share: how far from the dense outputs."""
        with torch.no_grad():
            return float(OutputDistillation()(m.eval()(val_images), None, dense_full))

    def score(m: nn.Module) -> float:
        # scored on the CPU, where the metrics and their labels are (and moved back)
        where = next(m.parameters()).device
        m.cpu()
        try:
            if metric is None:
                return agreement(dense_val, first_output(m(val_images)))
            value = float(metric.score(m, val_items, 16))
            return value if metric.higher_is_better else -value
        finally:
            m.to(where)

    # seconds alone: epochs enough that the clock stops the run
    config = FinetuneConfig(epochs=settings.epochs or 1000, lr=settings.lr, optimizer="adamw",
                            weight_decay=0.0, max_seconds=settings.seconds, seed=seed,
                            device=device)  # fmt: skip
    began = time.perf_counter()
    with torch.no_grad():
        before = score(model.eval())
    imitation_before = imitation(model)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = finetune(model, loader, config=config, teacher=dense, evaluate=score, log=log,
                      loss=OutputDistillation(), resume=False)  # fmt: skip
    model.eval().cpu()
    dense.cpu()
    best = result.best
    best_score = before if best is None or best.val_score is None else best.val_score
    # the weights before recovery are a candidate too: kept when no epoch beat them on the
    # validation score (ties: on the distillation loss)
    kept = best_score > before or (best_score == before and imitation(model) < imitation_before)
    if not kept:
        model.load_state_dict(initial)
    return {"kept": "recovered" if kept else "the weights before recovery",
            "train_samples": len(train_items), "validation_samples": len(val_items),
            "validation_metric": "agreement" if metric is None else metric.name,
            "carved_from": "the fit part", "seconds": time.perf_counter() - began,
            "steps": result.steps, "epochs": result.epochs_run, "stopped_by": result.stopped_by,
            "best_epoch": result.best_epoch,
            "imitation_before": imitation_before, "imitation_after": imitation(model),
            "validation_before": before,
            "validation_best": None if best is None else best.val_score}  # fmt: skip


def first_output(output: Any, error: type[Exception] = PipelineRecoveryError) -> Tensor:
    """The first tensor of a stage's output (what agreement compares); ``error`` when none."""
    from prunekit._tensors import first_tensor

    found = first_tensor(output)
    if found is None:
        raise error(f"the stage's output ({type(output).__name__}) holds no tensor")
    return found
