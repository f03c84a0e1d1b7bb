"""The state of one ``finetune`` run and how it advances: steps, epochs, stops, checkpoints.

``recovery.finetuning`` is the public face (config, results, the ``finetune`` verb); this
module is its machinery. A checkpoint holds everything a later call needs to continue
exactly: see ``Run.save``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from prunekit.errors import DataError
from prunekit.evaluate import evaluate_classification
from prunekit.recovery import _checkpoint as ck
from prunekit.recovery import distributed
from prunekit.recovery._batches import (
    batch_size,
    cpu_copy,
    default_forward,
    describe,
    steps_per_epoch,
    to_device,
)
from prunekit.recovery._checkpoint import CheckpointError, RecoveryError
from prunekit.recovery._optim import Layout, amp_settings, group_layout, lr_factor, make_optimizer
from prunekit.recovery.finetuning import EpochStats, FinetuneConfig, FinetuneResult
from prunekit.recovery.losses import ClassificationLoss

FORMAT = "prunekit.finetune/2"
LAST = "last.pt"
# settings that may change between a run and its resume: where it trains, how long a call is
NOT_IDENTITY = ("device", "max_seconds")
_now = time.monotonic  # the clock of time budgets (tests replace it)


class Clock:
    """Seconds since this call started, against ``budget`` (None: no budget)."""

    def __init__(self, budget: float | None) -> None:
        self.budget = budget
        self.started = _now()

    def elapsed(self) -> float:
        return _now() - self.started

    def fraction(self) -> float:
        return 0.0 if self.budget is None else min(1.0, self.elapsed() / self.budget)

    def expired(self) -> bool:
        return self.budget is not None and self.elapsed() >= self.budget


# --- the run ------------------------------------------------------------------------------


@dataclass
class Run:
    """One fine-tuning run: what a checkpoint holds, and how to advance it."""

    module: nn.Module
    loader: Any
    config: FinetuneConfig
    device: torch.device
    directory: Path | None
    teacher: nn.Module | None
    loss: Callable[[Any, Any, Any], Tensor]
    forward: Callable[[nn.Module, Any], Any]
    say: Callable[[str], object]
    optimizer: Optimizer
    per_epoch: int
    clock: Clock
    net: nn.Module = field(init=False)  # the module, or its DDP wrapper
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float = -math.inf
    best_state: dict[str, Tensor] | None = None
    start_epoch: int = 0  # epochs finished before this call
    resumed: bool = False
    stopped_by: str | None = None
    position: dict[str, Any] | None = None  # where a time stop left the epoch it cut
    resume_rng: Any = None
    steps: int = 0  # optimizer steps of this call
    # False while the model is not yet the one wanted (a sparsity ramp still running): such an
    # epoch is validated and recorded but never kept as the best weights
    eligible: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        self.net = self.module
        self.layout: Layout = group_layout(self.module, self.optimizer)
        self.param_ids = tuple(id(p) for p in self.module.parameters())
        self.fingerprint = ck.fingerprint(self.module)
        self.factor = lr_factor(self.config, self.per_epoch, self.clock)
        self.scheduler = LambdaLR(self.optimizer, self.factor)
        self.autocast, scaled = amp_settings(self.config, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if scaled else None

    @classmethod
    def create(
        cls,
        model: nn.Module,
        train_loader: Any,
        *,
        config: FinetuneConfig,
        device: torch.device,
        checkpoint_dir: Any,
        teacher: nn.Module | None,
        loss: Callable[[Any, Any, Any], Tensor] | None,
        forward: Callable[[nn.Module, Any], Any] | None,
        say: Callable[[str], object],
    ) -> Run:
        clock = Clock(config.max_seconds)
        directory = None
        if checkpoint_dir is not None:
            directory = Path(checkpoint_dir)
            if distributed.is_primary():
                directory = ck.prepare_dir(checkpoint_dir)
        distributed.barrier()
        loader = distributed.shard_loader(train_loader, config.seed)
        per_epoch = steps_per_epoch(loader, config)
        model.to(device)
        if teacher is not None:
            teacher.to(device)
            teacher.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise RecoveryError("the model has no trainable parameters (requires_grad=True)")
        criterion = loss or ClassificationLoss(config.distill_temperature, config.distill_alpha)
        return cls(
            module=model, loader=loader, config=config, device=device, directory=directory,
            teacher=teacher, loss=criterion, forward=forward or default_forward, say=say,
            optimizer=make_optimizer(params, config), per_epoch=per_epoch, clock=clock,
        )  # fmt: skip

    # --- start or resume --------------------------------------------------------------------

    def prepare(self, resume: bool) -> None:
        last = self.directory / LAST if self.directory is not None else None
        found = last is not None and last.exists()
        distributed.barrier()  # every rank has looked before rank 0 may delete
        if resume and found:
            self.resume()
        else:
            if self.directory is not None and distributed.is_primary():
                (self.directory / LAST).unlink(missing_ok=True)  # never resume an older run
                ck.remove_best_files(self.directory)
            ck.seed_everything(self.config.seed)
        distributed.barrier()
        self.net = distributed.wrap(self.module, self.device)

    def resume(self) -> None:
        assert self.directory is not None
        path = self.directory / LAST
        saved = ck.load(path)
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise CheckpointError(
                f"{str(path)!r} is not a prunekit fine-tuning checkpoint of this version; use "
                "another checkpoint_dir, or resume=False to overwrite it"
            )
        ck.check_fingerprint(saved["fingerprint"], self.fingerprint, path)
        ck.check_config(saved["config"], self.config.to_dict(), path, ignore=NOT_IDENTITY)
        self.module.load_state_dict(saved["model"])
        try:
            self.optimizer.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(
                f"the optimizer state in {str(path)!r} does not fit this model's trainable "
                f"parameters ({exc}); were other layers frozen?"
            ) from None
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        self.history = [EpochStats(**h) for h in saved["history"]]
        self.best_epoch = saved["best_epoch"]
        if self.best_epoch is not None:
            score = self.history[self.best_epoch - 1].val_score
            self.best_score = score if score is not None else -math.inf
            self.best_state = ck.load(ck.best_path(self.directory, self.best_epoch))
        self.start_epoch = int(saved["epoch"])
        self.resumed = True
        states = saved["rng"]
        mine = distributed.rank() if len(states) == distributed.world_size() else 0
        if len(states) != distributed.world_size():
            self.say(f"the checkpoint has RNG states for {len(states)} processes, this run has "
                     f"{distributed.world_size()}: random draws will differ")  # fmt: skip
        stopped = saved["stopped_by"]
        done = stopped in ("epochs", "early_stopping") or (
            stopped == "time" and self.config.schedule == "cosine_time"
        )
        self.stopped_by = stopped if done else None
        self.position = None if done else saved["position"]
        if self.position is not None:
            self.position = {**self.position, "rng_epoch": self.position["rng_epoch"][mine]}
            self.resume_rng = states[mine]
            where = f"in epoch {self.position['epoch']} after step {self.position['step']}"
        else:
            ck.set_rng_state(states[mine], self.loader, self.say)
            where = f"after epoch {self.start_epoch}/{self.config.epochs}"
        self.say(f"resuming from {path} {where}")

    # --- training ---------------------------------------------------------------------------

    def train(
        self,
        val_loader: Iterable[Any] | None,
        evaluate: Callable[[nn.Module], float] | None,
        on_step: Callable[[int, int, float], object] | None,
    ) -> None:
        while self.stopped_by is None:
            epoch = len(self.history) + 1
            stats = self.train_epoch(epoch, on_step)
            if stats is None:  # the clock stopped it in the middle
                self.stopped_by = "time"
                self.save(improved=False)
                break
            began = _now()
            stats = self.validate(stats, val_loader, evaluate)
            stats = replace(stats, seconds=stats.seconds + _now() - began)
            improved = self.record(stats)
            self.say(describe(stats, self.config.epochs))
            self.stopped_by = self.why_stop()
            self.save(improved)
        self.finish()

    def why_stop(self) -> str | None:
        done = len(self.history)
        if done >= self.config.epochs:
            return "epochs"
        patience = self.config.patience
        if (
            patience is not None
            and self.best_epoch is not None
            and done - self.best_epoch >= patience
        ):
            return "early_stopping"
        if self.time_up():
            return "time"
        return None

    def time_up(self) -> bool:
        if self.config.max_seconds is None:
            return False
        return distributed.any_true(self.clock.expired())  # all ranks stop at the same step

    def train_epoch(
        self, epoch: int, on_step: Callable[[int, int, float], object] | None
    ) -> EpochStats | None:
        """One epoch (or the rest of a cut one); None when the clock stops it early."""
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch - 1)  # type: ignore[union-attr]
        position, self.position = self.position, None
        if position is not None:  # replay the cut epoch's data order up to where it stopped
            ck.set_rng_state(position["rng_epoch"], self.loader, self.say)
            epoch_rng = position["rng_epoch"]
        else:
            epoch_rng = ck.rng_state(self.loader)
        batches = iter(self.loader)
        first, loss_sum, samples, seconds = 0, 0.0, 0, 0.0
        if position is not None:
            for _ in range(position["step"]):
                next(batches)
            ck.set_rng_state(self.resume_rng, self.loader, self.say)
            first, loss_sum = position["step"], position["loss_sum"]
            samples, seconds = position["samples"], position["seconds"]
        began = _now()
        self.net.train(self.config.train_mode)
        total = torch.tensor(loss_sum, dtype=torch.float64, device=self.device)
        steps = first
        for index in range(first, self.per_epoch):
            try:
                batch = next(batches)
            except StopIteration:
                break
            loss, n = self.step(batch)
            total += loss.detach().double() * n
            samples += n
            steps += 1
            self.steps += 1
            if on_step is not None:
                on_step(epoch, index, float(loss.detach()))
            self.check_swap()
            if index + 1 < self.per_epoch and self.time_up():
                self.position = {"epoch": epoch, "step": index + 1, "loss_sum": float(total),
                                 "samples": samples, "seconds": seconds + _now() - began,
                                 "rng_epoch": epoch_rng}  # fmt: skip
                self.say(
                    f"stopped by the time budget ({self.config.max_seconds:.3g} s) after step "
                    f"{index + 1}/{self.per_epoch} of epoch {epoch}"
                    + ("; checkpoint saved: call again to continue" if self.directory else "")
                )
                return None
        if steps == 0:
            raise DataError(f"the train loader yielded no batch in epoch {epoch}")
        summed, count = distributed.all_sum(float(total), samples)
        train_loss = summed / count
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"the training loss became {train_loss} in epoch {epoch}: lower the learning "
                "rate (the model's weights are no longer usable; resume from the last checkpoint)"
            )
        lr = float(self.optimizer.param_groups[0]["lr"])
        return EpochStats(epoch, train_loss, steps, lr, seconds=seconds + _now() - began)

    def step(self, batch: Any) -> tuple[Tensor, int]:
        batch = to_device(batch, self.device)
        amp = (
            torch.autocast(self.device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        with amp:
            output = self.forward(self.net, batch)
            teacher_output = None
            if self.teacher is not None:  # float32 targets, whatever the student runs in
                with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                    teacher_output = self.forward(self.teacher, batch)
            loss = self.loss(output, batch, teacher_output)
        optimizer = self.optimizer
        optimizer.zero_grad(set_to_none=True)
        clip = self.config.grad_clip
        params = [p for g in optimizer.param_groups for p in g["params"]] if clip else []
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip is not None:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
        self.scheduler.step()
        return loss, batch_size(batch)

    def check_swap(self) -> None:
        """Pruning in ``on_step`` replaced parameters: rebuild optimizer, schedule, DDP."""
        ids = tuple(id(p) for p in self.module.parameters())
        if ids == self.param_ids:
            return
        schedule = self.scheduler.state_dict()
        self.net, self.optimizer, self.layout = distributed.rebuild_after_swap(
            self.module, self.optimizer, self.layout, self.device
        )
        rates = [g["lr"] for g in self.optimizer.param_groups]
        self.scheduler = LambdaLR(self.optimizer, self.factor)
        self.scheduler.load_state_dict(schedule)
        for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        self.param_ids = ids
        self.fingerprint = ck.fingerprint(self.module)
        self.net.train(self.config.train_mode)

    # --- validation and the best weights ----------------------------------------------------

    def validate(
        self,
        stats: EpochStats,
        val_loader: Iterable[Any] | None,
        evaluate: Callable[[nn.Module], float] | None,
    ) -> EpochStats:
        """Rank 0 validates; every rank gets its numbers (all hold the same weights)."""
        if val_loader is None and evaluate is None:
            return stats
        found: dict[str, float | None] = {}
        if distributed.is_primary():
            if val_loader is not None:
                metrics = evaluate_classification(
                    self.module, val_loader, device=self.device, topk=(1,),
                    max_batches=self.config.val_max_batches,
                )  # fmt: skip
                found = {"val_top1": metrics.top1, "val_loss": metrics.loss,
                         "val_score": metrics.top1}  # fmt: skip
            if evaluate is not None:
                self.module.eval()
                try:
                    with torch.no_grad():
                        found["val_score"] = float(evaluate(self.module))
                finally:
                    self.module.train(self.config.train_mode)
        return replace(stats, **distributed.broadcast_object(found))

    def record(self, stats: EpochStats) -> bool:
        """Append ``stats``; keep the weights if they are the best so far (True then)."""
        self.history.append(stats)
        score = stats.val_score
        if score is None or stats.epoch < self.config.min_epochs:
            return False
        if self.eligible is not None and not self.eligible():
            return False
        if self.best_epoch is not None and not score > self.best_score:
            return False
        self.best_epoch, self.best_score = stats.epoch, score
        self.best_state = cpu_copy(self.module.state_dict())
        return True

    def save(self, improved: bool) -> None:
        """Checkpoint: the best weights first (if new), then ``last.pt``. Every rank's RNG
        state goes in (a collective: all ranks call this); only rank 0 writes."""
        if self.directory is None:
            return
        rng = distributed.gather_objects(ck.rng_state(self.loader))
        position = self.position
        if position is not None:
            position = {**position, "rng_epoch": distributed.gather_objects(position["rng_epoch"])}
        if distributed.is_primary():
            epoch = len(self.history)
            best = ck.best_path(self.directory, epoch)
            if improved and self.best_state is not None:
                ck.save_atomic(self.best_state, best)
            checkpoint = {
                "format": FORMAT,
                "epoch": epoch,
                "position": position,
                "stopped_by": self.stopped_by,
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng,
                "history": [asdict(h) for h in self.history],
                "best_epoch": self.best_epoch,
                "fingerprint": self.fingerprint,
                "config": self.config.to_dict(),
            }
            ck.save_atomic(checkpoint, self.directory / LAST)
            if improved:  # only now is the older best file unreferenced
                ck.remove_best_files(self.directory, keep=best)
        distributed.barrier()

    def finish(self) -> None:
        if self.stopped_by == "early_stopping" and self.start_epoch < len(self.history):
            self.say(f"stopped early: no better validation score in {self.config.patience} "
                     f"epochs after epoch {self.best_epoch}")  # fmt: skip
        elif self.stopped_by == "time" and self.steps and self.position is None:
            self.say(f"stopped by the time budget ({self.config.max_seconds:.3g} s) after epoch "
                     f"{len(self.history)}/{self.config.epochs}")  # fmt: skip
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)
            if self.best_epoch != len(self.history):
                self.say(f"restored the weights of epoch {self.best_epoch} (best validation score)")

    def result(self) -> FinetuneResult:
        return FinetuneResult(
            self.history,
            self.best_epoch,
            self.resumed,
            self.start_epoch,
            self.directory / LAST if self.directory is not None else None,
            stopped_by=self.stopped_by or "epochs",
            seconds=self.clock.elapsed(),
            steps=self.steps,
        )
