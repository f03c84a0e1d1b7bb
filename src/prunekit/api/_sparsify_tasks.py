"""What ``sparsify_`` does with each kind of data: score a model, measure a sensitivity drop,
train while the masks move.

* labelled images (classification, segmentation): the task metric on the held-out eval part
  (top-1, Dice), the drop on a validation share of the fit part, training through
  ``recover_`` (task loss plus distillation from the dense model);
* sentences (a sentence encoder and its tokenizer): the fidelity of the embeddings to the
  dense model's on the held-out sentences (Spearman of pairwise similarities), the drop as
  output divergence on fit sentences, training by distilling the dense model's embeddings
  and hidden states (``recovery.embedding_distill``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunekit.errors import DataError

OnStep = Callable[[int, int, float], object]


class LabelledTask:
    """Classification or segmentation data."""

    needs_teacher = False

    def __init__(self, data: Any, config: Any, example: Any) -> None:
        self.data = data
        self.config = config
        self.example = example
        self.key = "top1" if data.task == "classification" else "dice"

    def measure(self, model: nn.Module) -> dict[str, Any]:
        from prunekit.api.evaluation import evaluate

        return evaluate(model, self.data, example=self.example)

    def _held(self) -> Any:
        from prunekit.data.specs import seeded_split

        cfg = self.config
        _, held = self.data.fit_and_validation(cfg.validation, cfg.seed)
        if len(held) > cfg.sensitivity_samples:
            _, held = seeded_split(held, 0.5, cfg.seed, "sensitivity samples",
                                   held=cfg.sensitivity_samples)  # fmt: skip
        return held

    def sensitivity_metric(
        self, model: nn.Module
    ) -> tuple[Callable[[nn.Module], float], dict[str, Any]]:
        held = self._held()
        settings = {"data": self.data.spec, "split": "fit (validation share)",
                    "samples": len(held), "seed": self.config.seed}  # fmt: skip
        loader = torch.utils.data.DataLoader(held, batch_size=64)
        if self.data.task == "classification":
            from prunekit.planning.sensitivity import AccuracyDrop

            settings["metric"] = "top1_drop"
            return AccuracyDrop(model, loader), settings
        from prunekit.evaluate.segmentation import evaluate_segmentation

        base = evaluate_segmentation(model, loader).dice
        settings["metric"] = "dice_drop"
        return (lambda m: base - evaluate_segmentation(m, loader).dice), settings

    def steps_per_epoch(self) -> int:
        train, _ = self.data.fit_and_validation(self.config.validation, self.config.seed)
        n, batch = len(train), self.config.batch_size
        return n // batch if n > batch else 1

    def train(
        self,
        model: nn.Module,
        teacher: nn.Module | None,
        record: dict[str, Any],
        log: Callable[[str], object],
        on_step: OnStep,
        eligible: Callable[[], bool] | None,
    ) -> None:
        from prunekit.api.recover import recover_

        recover_(model, self.data, self.config.recover_config(), teacher=teacher,
                 example=self.example, record=record, on_step=on_step, log=log,
                 eligible=eligible)  # fmt: skip


class SentenceTask:
    """Sentences for a sentence encoder (embedding fidelity, embedding distillation)."""

    needs_teacher = True
    key = "spearman"
    max_length = 128

    def __init__(self, data: Any, config: Any, tokenizer: Any) -> None:
        self.data = data
        self.config = config
        self.tokenizer = tokenizer
        self._dense: torch.Tensor | None = None

    def _embed(self, model: nn.Module) -> torch.Tensor:
        from prunekit.evaluate.embedding import embed

        return embed(model, self.tokenizer, list(self.data.eval), max_length=self.max_length)

    def measure(self, model: nn.Module) -> dict[str, Any]:
        """Fidelity to the model as first measured (the dense one): 1.0 for itself."""
        from prunekit.evaluate.embedding import fidelity

        embeddings = self._embed(model)
        if self._dense is None:
            self._dense = embeddings
        quality = fidelity(self._dense, embeddings)
        return {"samples": len(self.data.eval), **{k: float(v) for k, v in quality.items()
                                                   if isinstance(v, (int, float))}}  # fmt: skip

    def sensitivity_metric(
        self, model: nn.Module
    ) -> tuple[Callable[[nn.Module], float], dict[str, Any]]:
        from prunekit.evaluate.embedding import sentence_batches
        from prunekit.inputs import as_example_inputs
        from prunekit.planning.sensitivity import OutputDivergence

        _, held = self.data.fit_and_validation(self.config.validation, self.config.seed)
        held = list(held)[: min(64, self.config.sensitivity_samples)]
        batches = sentence_batches(self.tokenizer, held, 16, self.max_length)
        settings = {"data": self.data.spec, "split": "fit (validation share)",
                    "samples": len(held), "seed": self.config.seed,
                    "metric": "output_divergence"}  # fmt: skip
        return OutputDivergence(model, [as_example_inputs(b) for b in batches]), settings

    def _batches(self) -> list[dict[str, torch.Tensor]]:
        from prunekit.evaluate.embedding import sentence_batches

        # sentences of similar length together: little padding, more sentences per second
        fit = sorted(self.data.fit, key=len)
        return sentence_batches(self.tokenizer, fit, self.config.batch_size, self.max_length)

    def steps_per_epoch(self) -> int:
        return len(self._batches())

    def train(
        self,
        model: nn.Module,
        teacher: nn.Module | None,
        record: dict[str, Any],
        log: Callable[[str], object],
        on_step: OnStep,
        eligible: Callable[[], bool] | None,
    ) -> None:
        from prunekit.recovery.embedding_distill import DEFAULT_LR, distill_embeddings

        assert teacher is not None
        cfg = self.config

        def say(line: str) -> None:
            log(line)

        done = distill_embeddings(
            model, teacher, self._batches(), epochs=cfg.epochs or 1000,
            time_budget_s=cfg.seconds or 1e9, lr=cfg.lr if cfg.lr is not None else DEFAULT_LR,
            hidden_weight=1.0, log=say, step_hook=on_step,
        )  # fmt: skip
        record.update({"stopped_by": done.stopped_by, "steps": done.steps,
                       "epochs": done.epochs, "seconds": done.seconds,
                       "first_loss": done.first_loss, "last_loss": done.last_loss,
                       "train_samples": len(self.data.fit),
                       "loss": "embedding + relational + hidden-state distillation"})  # fmt: skip


def task_for(data: Any, config: Any, tokenizer: Any, example: Any) -> Any:
    """The task object for ``data`` (None without data); refuses what cannot be trained."""
    if data is None:
        if config.trains:
            raise DataError(
                f"--schedule {config.schedule} with fine-tuning needs --data (the fit part is "
                "trained on; the eval part reports the metric)"
            )
        return None
    if data.task == "embedding":
        if tokenizer is None:
            if config.trains or config.allocation == "sensitivity":
                raise DataError(
                    f"--data {data.spec} holds sentences: sparsify a Hugging Face model "
                    "directory (its tokenizer encodes them)"
                )
            return None
        return SentenceTask(data, config, tokenizer)
    if data.task not in ("classification", "segmentation"):
        if config.trains:
            raise DataError(
                f"fine-tuning while sparsifying needs classification, segmentation or sentence "
                f"data; --data {data.spec} holds {data.task} data (use --schedule oneshot "
                "without --epochs/--seconds)"
            )
        return None
    if example is None:
        example = data.eval[0][0].unsqueeze(0)
    return LabelledTask(data, config, example)
