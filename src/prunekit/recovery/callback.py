"""Recovery inside the user's own training loop: a distiller, and prune / fine-tune rounds.

``Distiller`` turns a frozen teacher into a loss for any loop::

    distiller = Distiller(dense_copy, temperature=4.0, alpha=0.7)
    loss = distiller.loss(student(x), x, y)          # runs the teacher on x under no_grad

``IterativePruning`` alternates pruning and fine-tuning. Structured pruning *replaces* every
tensor it shrinks with a new ``nn.Parameter``: an optimizer built before pruning still holds
the old, full-size tensors, so ``optimizer.step()`` would update tensors the model no longer
uses (and the model's new tensors would never train). ``IterativePruning.step()`` therefore
rebuilds the optimizer after each pruning step: same class, same param-group hyperparameters
(current learning rate included), every group holding the model's current tensors of the
same names. Optimizer state (momentum, Adam moments) is carried over for the tensors that
pruning left untouched and starts from zero for the replaced ones, whose old state has the
wrong shape. An LR scheduler bound to the old optimizer must be rebuilt on ``pruner.optimizer``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from prunekit.graph import trace_channels
from prunekit.inputs import ExampleInputs, as_example_inputs
from prunekit.pruning import PruneResult, StructuredPruning, prune
from prunekit.pruning._tensors import named_tensors
from prunekit.pruning.select import keep_count, producers
from prunekit.recovery._optim import group_layout, rebuild_optimizer
from prunekit.recovery.distill import DistillationLoss, logits_of
from prunekit.recovery.finetuning import FinetuneConfig, FinetuneResult, RecoveryError, finetune

__all__ = [
    "Distiller",
    "IterativePruning",
    "PruningRound",
    "StructuredPruneSteps",
    "count_parameters",
]

PruneStep = Callable[[nn.Module, int], object]


def count_parameters(model: nn.Module) -> int:
    """Number of scalars in the model's parameters (tied parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


class Distiller:
    """Distillation loss for a training loop of one's own.

    ``loss(student_output, inputs, labels)`` runs the teacher on ``inputs`` under
    ``torch.no_grad`` and returns ``DistillationLoss(temperature, alpha)``; if the teacher's
    logits are already at hand, pass ``teacher_logits=`` instead of ``inputs`` (inputs and
    logits are both tensors, so they are told apart by keyword, never guessed). The teacher is
    put in eval mode (and kept there: it is switched back if something calls ``.train()`` on
    it) and never receives gradients. Inputs must already be on the teacher's device.
    """

    def __init__(self, teacher: nn.Module, *, temperature: float = 4.0, alpha: float = 0.7):
        self.teacher = teacher
        self.criterion = DistillationLoss(temperature, alpha)
        teacher.eval()

    @property
    def alpha(self) -> float:
        return self.criterion.alpha

    @property
    def temperature(self) -> float:
        return self.criterion.temperature

    def teacher_logits(self, inputs: Any) -> Tensor:
        """The teacher's logits for ``inputs`` (eval mode, no gradient)."""
        if self.teacher.training:
            self.teacher.eval()
        with torch.no_grad():
            return logits_of(self.teacher(inputs)).detach()

    def loss(
        self,
        student_output: Any,
        inputs: Any = None,
        labels: Tensor | None = None,
        *,
        teacher_logits: Tensor | None = None,
    ) -> Tensor:
        """The distillation loss of ``student_output`` (logits or an output with ``.logits``).

        Give the batch's ``inputs`` (the teacher runs on them) or ``teacher_logits``, not
        both; ``labels`` may be None only when ``alpha == 1``.
        """
        if inputs is not None and teacher_logits is not None:
            raise ValueError("pass either inputs (the teacher runs on them) or teacher_logits")
        if teacher_logits is None and self.alpha > 0:
            if inputs is None:
                raise ValueError(
                    "Distiller.loss needs the batch's inputs (or teacher_logits=) when alpha > 0"
                )
            teacher_logits = self.teacher_logits(inputs)
        return self.criterion(student_output, teacher_logits, labels)

    __call__ = loss


class StructuredPruneSteps:
    """A prune step for ``IterativePruning``: ``prune(...)`` with a growing ratio.

    ``ratios[i]`` is the fraction of each group's *original* channels removed once step ``i``
    is done (non-decreasing, in [0, 1)); e.g. ``(0.25, 0.5)`` removes a quarter, then another
    quarter of the original size. Original sizes are recorded at step 0 and matched to later
    graphs by the names of the modules producing each group's channels; each step passes
    exact ``keep`` counts to ``prune``. ``config`` supplies ``importance``, ``ignore`` and
    ``round_to`` (its ``ratio`` is replaced; per-module ``ratios`` are not supported here);
    data-driven criteria need scores, so write a step of your own for them.
    """

    def __init__(
        self,
        inputs: ExampleInputs | Tensor | tuple[Any, ...] | dict[str, Any],
        ratios: Sequence[float],
        config: StructuredPruning | None = None,
    ) -> None:
        self.inputs = as_example_inputs(inputs)
        self.ratios = tuple(float(r) for r in ratios)
        if not self.ratios:
            raise RecoveryError("ratios must list at least one pruning ratio")
        for r in self.ratios:
            if not 0 <= r < 1:
                raise RecoveryError(f"every ratio must be in [0, 1), got {list(self.ratios)}")
        if any(b < a for a, b in zip(self.ratios, self.ratios[1:], strict=False)):
            raise RecoveryError(f"ratios must not decrease, got {list(self.ratios)}")
        self.config = config or StructuredPruning()
        if self.config.ratios:
            raise RecoveryError(
                "StructuredPruneSteps does not support per-module ratios; use ignore=, or a "
                "prune step of your own"
            )
        self._original: dict[tuple[str, ...], int] = {}

    def __len__(self) -> int:
        return len(self.ratios)

    def __call__(self, model: nn.Module, step: int) -> PruneResult:
        if not 0 <= step < len(self.ratios):
            raise RecoveryError(f"step {step} is out of range: there are {len(self.ratios)}")
        graph = trace_channels(model, self.inputs)
        tensors = named_tensors(model)
        keys = {g.id: tuple(producers(g, tensors)) for g in graph.prunable}
        if step == 0 or not self._original:
            self._original = {keys[g.id]: g.size for g in graph.prunable}
        ratio = self.ratios[step]
        keep: dict[int, int] = {}
        for group in graph.prunable:
            original = self._original.get(keys[group.id])
            if original is None:  # a group not seen at step 0: prune it relative to its size
                done = self.ratios[step - 1] if step else 0.0
                original = math.ceil(group.size / (1 - done))
            target = keep_count(original, ratio, self.config.round_to)
            keep[group.id] = max(1, min(group.size, target))
        return prune(model, self.inputs, replace(self.config, ratio=ratio), graph=graph, keep=keep)


@dataclass
class PruningRound:
    """One pruning step: parameter counts before and after, what the step returned (a
    ``PruneResult`` for ``StructuredPruneSteps``), and the fine-tuning that followed (``run``)."""

    index: int
    params_before: int
    params_after: int
    result: object
    finetune: FinetuneResult | None = None


class IterativePruning:
    """Prune a little, fine-tune, repeat: ``steps`` rounds of ``prune_step(model, i)``.

    ``prune_step`` prunes ``model`` in place (e.g. ``StructuredPruneSteps(inputs, [0.25,
    0.5])``, whose length gives ``steps``). In a loop of one's own, call ``step()`` between
    training phases and train with ``pruner.optimizer`` afterwards (see the module docstring
    for why it must be rebuilt); pass ``optimizer`` (rebuilt by parameter name) or
    ``make_optimizer(model)`` (called after each step). ``run(train_loader, config=...)`` does
    it all with ``finetune`` (which builds its own optimizer each round).
    """

    def __init__(
        self,
        model: nn.Module,
        prune_step: PruneStep,
        steps: int | None = None,
        *,
        optimizer: Optimizer | None = None,
        make_optimizer: Callable[[nn.Module], Optimizer] | None = None,
    ) -> None:
        if steps is None:
            try:
                steps = len(prune_step)  # type: ignore[arg-type]
            except TypeError:
                raise RecoveryError("steps is required when prune_step has no length") from None
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise RecoveryError(f"steps must be a positive integer, got {steps!r}")
        if optimizer is not None and make_optimizer is not None:
            raise RecoveryError("pass optimizer or make_optimizer, not both")
        self.model = model
        self.prune_step = prune_step
        self.steps = steps
        self.make_optimizer = make_optimizer
        self.optimizer = make_optimizer(model) if make_optimizer is not None else optimizer
        self.rounds: list[PruningRound] = []

    @property
    def step_index(self) -> int:
        """How many pruning steps are done."""
        return len(self.rounds)

    @property
    def done(self) -> bool:
        return self.step_index >= self.steps

    def step(self) -> PruningRound:
        """Run the next pruning step, then rebuild ``self.optimizer`` on the new tensors."""
        if self.done:
            raise RecoveryError(f"all {self.steps} pruning steps are done")
        index = self.step_index
        layout = group_layout(self.model, self.optimizer) if self.optimizer is not None else None
        before = count_parameters(self.model)
        result = self.prune_step(self.model, index)
        after = count_parameters(self.model)
        if self.make_optimizer is not None:
            self.optimizer = self.make_optimizer(self.model)
        elif self.optimizer is not None and layout is not None:
            self.optimizer = rebuild_optimizer(self.model, self.optimizer, layout)
        record = PruningRound(index, before, after, result)
        self.rounds.append(record)
        return record

    def run(
        self,
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
        loss: Callable[[Any, Any, Any], Tensor] | None = None,
        forward: Callable[[nn.Module, Any], Any] | None = None,
    ) -> list[PruningRound]:
        """Each remaining step: prune, then ``finetune`` with ``config`` (arguments as there).

        With ``checkpoint_dir``, round ``i`` checkpoints in ``checkpoint_dir/round-<i>``. To
        resume an interrupted run, call ``run`` again on the *dense* model with a new
        ``IterativePruning``: finished rounds are pruned again (deterministic for magnitude
        criteria) and their fine-tuning returns at once with the stored weights; the
        interrupted round resumes at its next epoch. The architecture fingerprint in each
        checkpoint refuses a mismatch.
        """
        while not self.done:
            record = self.step()
            directory = (
                os.path.join(os.fspath(checkpoint_dir), f"round-{record.index + 1}")
                if checkpoint_dir is not None
                else None
            )
            record.finetune = finetune(
                self.model,
                train_loader,
                config=config,
                teacher=teacher,
                val_loader=val_loader,
                checkpoint_dir=directory,
                resume=resume,
                evaluate=evaluate,
                on_step=on_step,
                log=log,
                loss=loss,
                forward=forward,
            )
        return self.rounds
