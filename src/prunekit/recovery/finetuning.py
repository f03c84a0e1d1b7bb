"""Fine-tune a (pruned) classifier from DataLoaders, with distillation and resumable checkpoints.

``finetune(model, train_loader, config=FinetuneConfig(...), teacher=dense_copy)`` trains any
``nn.Module`` that maps inputs to logits ``[batch, num_classes]`` (or an output with
``.logits``) on ``(inputs, labels)`` batches, on the CPU or a GPU, optionally distilling from
the dense model (``prunekit.recovery.distill``).

Checkpoints: with ``checkpoint_dir``, the full training state is written after *every* epoch
(``last.pt``: model, optimizer, LR schedule, epoch, history, RNG states of torch / CUDA /
Python / NumPy and of the loader's own ``torch.Generator``, the config, and a fingerprint of
the model's tensor names and shapes). Files are written to a temporary name and renamed with
``os.replace``, so a crash never leaves a torn checkpoint. Calling ``finetune`` again with the
same directory resumes at the epoch after the last finished one; calling it after the last
epoch returns at once with the stored history and the final weights. Because the RNG states
and the data order are restored, a resumed run on the CPU gives bit-identical weights to an
uninterrupted one (on a GPU, only as deterministic as the kernels used).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from prunekit._outputs import open_permissions
from prunekit._utils import module_device
from prunekit.errors import DataError, PrunekitError
from prunekit.evaluate import evaluate_classification
from prunekit.recovery.distill import DistillationLoss

__all__ = [
    "CheckpointError",
    "EpochStats",
    "FinetuneConfig",
    "FinetuneResult",
    "RecoveryError",
    "finetune",
]

_logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
_FORMAT = "prunekit.finetune/1"
_LAST = "last.pt"
_BEST_PREFIX = "best-epoch"


class RecoveryError(PrunekitError):
    """Fine-tuning cannot run as asked (a bad setting, a model with nothing to train)."""


class CheckpointError(RecoveryError):
    """A checkpoint directory is unusable, or its checkpoint belongs to another run."""


def _number(value: Any, what: str, *, low: float, high: float = math.inf, strict: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = (value > low if strict else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if strict else f">= {low}"
        limit = "" if high == math.inf else f" and <= {high}"
        raise RecoveryError(f"{what} must be a number {bound}{limit}, got {value!r}")
    return float(value)


def _count(value: Any, what: str, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        none = " or None" if optional else ""
        raise RecoveryError(f"{what} must be a positive integer{none}, got {value!r}")


@dataclass(frozen=True)
class FinetuneConfig:
    """How ``finetune`` trains.

    ``optimizer``: ``"sgd"`` (with ``momentum``) or ``"adamw"``; ``weight_decay`` applies to
    every trainable tensor. ``schedule``: ``"cosine"`` decays the learning rate from ``lr`` to
    0 over all steps of all epochs, ``"constant"`` keeps it; either starts with a linear
    warm-up over ``warmup_epochs`` epochs (may be fractional; 0 disables). The LR changes
    every step. ``distill_alpha`` / ``distill_temperature``: see ``DistillationLoss``; used
    only when a teacher is given (``distill_alpha=0`` then ignores it).
    ``max_steps_per_epoch`` cuts each epoch short (required for a loader without ``len``);
    ``val_max_batches`` limits validation. ``device``: where to train (``None``: wherever the
    model is). ``seed`` seeds torch, Python and NumPy at the start of a fresh run (not on
    resume, which restores the saved RNG states instead).
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

    def __post_init__(self) -> None:
        _count(self.epochs, "epochs")
        _number(self.lr, "lr", low=0, strict=True)
        if self.optimizer not in OPTIMIZERS:
            raise RecoveryError(
                f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}"
            )
        _number(self.momentum, "momentum", low=0, high=1, strict=False)
        _number(self.weight_decay, "weight_decay", low=0, strict=False)
        if self.schedule not in SCHEDULES:
            raise RecoveryError(
                f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}"
            )
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpochStats:
    """One finished epoch. ``train_loss``: mean training loss per sample (the distillation
    loss when a teacher is used). ``lr``: learning rate after the epoch's last step.
    ``val_top1`` / ``val_loss``: on ``val_loader`` (None without one). ``val_score``: what
    selects the best epoch: ``evaluate(model)`` if given, else ``val_top1``."""

    epoch: int
    train_loss: float
    steps: int
    lr: float
    val_top1: float | None = None
    val_loss: float | None = None
    val_score: float | None = None


@dataclass
class FinetuneResult:
    """``history``: every finished epoch, including those of earlier, interrupted calls.
    ``best_epoch``: the epoch with the highest ``val_score`` (None without validation), whose
    weights the model holds on return. ``resumed``: whether a checkpoint was picked up;
    ``start_epoch``: how many epochs it had already finished."""

    history: list[EpochStats]
    best_epoch: int | None
    resumed: bool
    start_epoch: int = 0
    checkpoint: Path | None = None

    @property
    def epochs_run(self) -> int:
        """Epochs trained by this call (0 when everything was already done)."""
        return len(self.history) - self.start_epoch

    @property
    def best(self) -> EpochStats | None:
        if self.best_epoch is None:
            return None
        return self.history[self.best_epoch - 1]

    @property
    def final(self) -> EpochStats | None:
        return self.history[-1] if self.history else None


# --- checkpoint files -------------------------------------------------------------------------


def _prepare_dir(checkpoint_dir: str | os.PathLike[str]) -> Path:
    path = Path(checkpoint_dir)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"checkpoint_dir {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"cannot create checkpoint_dir {str(path)!r}: {exc.strerror or exc}"
        ) from None
    try:  # a real write: os.access does not see read-only mounts, and root passes it anyway
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CheckpointError(
            f"checkpoint_dir {str(path)!r} is not writable: {exc.strerror or exc}"
        ) from None
    for stale in path.glob("*.pt.*.tmp"):  # left by a crash in the middle of a write
        with contextlib.suppress(OSError):
            stale.unlink()
    return path


def _save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        open_permissions(Path(tmp))  # mkstemp's 0600 would hide checkpoints from teammates
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r} ({type(exc).__name__}: {exc}); delete it or "
            "pass resume=False to start over"
        ) from None


def _fingerprint(model: nn.Module) -> list[list[Any]]:
    """Name and shape of every entry of the model's state dict (parameters and buffers)."""
    return [[name, list(t.shape)] for name, t in model.state_dict().items()]


def _check_fingerprint(stored: list[list[Any]], current: list[list[Any]], path: Path) -> None:
    if stored == current:
        return
    here = {name: shape for name, shape in current}
    there = {name: shape for name, shape in stored}
    diffs = []
    for name in sorted(set(here) | set(there)):
        a, b = here.get(name), there.get(name)
        if a != b:
            diffs.append(
                f"{name}: {a if a is not None else 'absent'} here, "
                f"{b if b is not None else 'absent'} in the checkpoint"
            )
    detail = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
    raise CheckpointError(
        f"checkpoint {str(path)!r} was written for a different model ({len(diffs)} tensors "
        f"differ: {detail}); use another checkpoint_dir, or resume=False to discard it"
    )


def _check_config(stored: Mapping[str, Any], config: FinetuneConfig, path: Path) -> None:
    current = config.to_dict()
    diffs = [
        f"{k}={stored.get(k)!r} there, {current[k]!r} here"
        for k in current
        if k != "device" and stored.get(k) != current[k]
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written with different settings ({'; '.join(diffs)});"
            " resuming would not reproduce that run: use another checkpoint_dir, or "
            "resume=False to discard it"
        )


def _best_path(directory: Path, epoch: int) -> Path:
    return directory / f"{_BEST_PREFIX}{epoch:04d}.pt"


def _remove_best_files(directory: Path, keep: Path | None = None) -> None:
    for old in directory.glob(f"{_BEST_PREFIX}*.pt"):
        if keep is None or old.name != keep.name:
            with contextlib.suppress(OSError):
                old.unlink()


# --- RNG state --------------------------------------------------------------------------------


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """``torch.Generator`` objects a DataLoader shuffles with (its own, or its sampler's)."""
    found: dict[int, torch.Generator] = {}
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(
            getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None
        ),
    ]
    for g in candidates:
        if isinstance(g, torch.Generator):
            found.setdefault(id(g), g)
    return list(found.values())


def _rng_state(loader: Any) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "loader": [g.get_state() for g in _loader_generators(loader)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any], loader: Any, log: Callable[[str], object]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            log("the number of GPUs changed since the checkpoint: CUDA RNG states not restored")
    generators = _loader_generators(loader)
    if len(generators) == len(state["loader"]):
        for g, s in zip(generators, state["loader"], strict=True):
            g.set_state(s)
    else:
        log("the train loader's generators differ from the checkpoint's: data order not restored")


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants tuples; a checkpoint may hand lists back."""
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


# --- training ---------------------------------------------------------------------------------


def _steps_per_epoch(loader: Iterable[Any], config: FinetuneConfig) -> int:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        if config.max_steps_per_epoch is None:
            raise RecoveryError(
                "the train loader has no length; set FinetuneConfig.max_steps_per_epoch so the "
                "learning-rate schedule knows how many steps an epoch has"
            ) from None
        return config.max_steps_per_epoch
    if n == 0:
        raise DataError("the train loader is empty")
    return n if config.max_steps_per_epoch is None else min(n, config.max_steps_per_epoch)


def _lr_factor(config: FinetuneConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(total, round(config.warmup_epochs * steps_per_epoch))
    cosine = config.schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _make_optimizer(params: list[nn.Parameter], config: FinetuneConfig) -> Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _split(batch: Any, index: int) -> tuple[Any, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Tensor):
        return batch[0], batch[1]
    raise DataError(
        f"training batch {index}: expected an (inputs, labels) pair with a labels tensor, got "
        f"{type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


def _cpu_copy(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


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
) -> FinetuneResult:
    """Fine-tune ``model`` in place on ``train_loader``'s ``(inputs, labels)`` batches.

    ``teacher``: the dense model to distill from (``DistillationLoss`` with the config's
    alpha and temperature); it runs in eval mode under ``torch.no_grad`` and is never updated.
    Keep a copy made *before* pruning (``copy.deepcopy(model)``): the teacher must not be the
    model itself. Model and teacher are moved to ``config.device`` (and stay there).

    Validation: after every epoch, top-1 accuracy on ``val_loader``
    (``prunekit.evaluate.evaluate_classification``) and/or ``evaluate(model)`` (called in eval
    mode under ``no_grad``; higher is better, it replaces top-1 as the selection metric). With
    either, the weights of the best epoch (the first, on ties) are restored at the end: the
    returned model is the best one seen, not necessarily the last.

    ``checkpoint_dir``: write a checkpoint after every epoch (see the module docstring) and,
    with ``resume=True``, continue from one found there; a checkpoint of another model or
    another config is refused with ``CheckpointError``. ``resume=False`` discards it. The
    best epoch's weights are kept there too, so the best-weights rule survives a resume.

    ``on_step(epoch, step, loss)`` runs after every optimizer step (epochs count from 1, steps
    from 0; an exception it raises stops training, the finished epochs' checkpoints stay).
    ``log`` receives one line per epoch (default: this module's logger at INFO).
    The train/eval flags of every submodule of model and teacher are restored on return.
    """
    config = config or FinetuneConfig()
    say: Callable[[str], object] = log if log is not None else _logger.info
    if teacher is model:
        raise RecoveryError(
            "the teacher is the model being fine-tuned; distill from a copy made before "
            "pruning (teacher = copy.deepcopy(model))"
        )
    device = torch.device(config.device) if config.device is not None else module_device(model)
    directory = _prepare_dir(checkpoint_dir) if checkpoint_dir is not None else None
    steps_per_epoch = _steps_per_epoch(train_loader, config)

    modes = {m: m.training for m in model.modules()}
    if teacher is not None:
        modes.update({m: m.training for m in teacher.modules()})
    try:
        model.to(device)
        if teacher is not None:
            teacher.to(device)
            teacher.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise RecoveryError("the model has no trainable parameters (requires_grad=True)")
        run = _Run(
            model=model,
            optimizer=_make_optimizer(params, config),
            config=config,
            device=device,
            steps_per_epoch=steps_per_epoch,
            fingerprint=_fingerprint(model),
            teacher=teacher if config.distill_alpha > 0 else None,
            directory=directory,
        )
        if directory is not None and resume and (directory / _LAST).exists():
            run.resume(train_loader, say)
        else:
            if directory is not None:  # start over: never resume an older run later
                (directory / _LAST).unlink(missing_ok=True)
                _remove_best_files(directory)
            _seed(config.seed)
        for epoch in range(run.start + 1, config.epochs + 1):
            stats = run.train_epoch(epoch, train_loader, on_step)
            stats = run.validate(stats, val_loader, evaluate)
            improved = run.record(stats)
            say(_describe(stats, config.epochs))
            run.save(train_loader, improved)
        if run.best_state is not None:
            model.load_state_dict(run.best_state)
            if run.best_epoch != len(run.history):
                say(f"restored the weights of epoch {run.best_epoch} (best validation score)")
    finally:
        for module, was_training in modes.items():
            module.training = was_training
    return FinetuneResult(
        run.history,
        run.best_epoch,
        run.resumed,
        run.start,
        directory / _LAST if directory is not None else None,
    )


@dataclass
class _Run:
    """The state of one fine-tuning run: what a checkpoint holds, and how to advance it."""

    model: nn.Module
    optimizer: Optimizer
    config: FinetuneConfig
    device: torch.device
    steps_per_epoch: int
    fingerprint: list[list[Any]]
    teacher: nn.Module | None  # None: no distillation
    directory: Path | None
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float = -math.inf
    best_state: dict[str, Tensor] | None = None
    start: int = 0  # epochs finished before this call
    resumed: bool = False

    def __post_init__(self) -> None:
        self.scheduler = LambdaLR(self.optimizer, _lr_factor(self.config, self.steps_per_epoch))
        self.criterion = DistillationLoss(
            self.config.distill_temperature,
            self.config.distill_alpha if self.teacher is not None else 0.0,
        )

    def resume(self, train_loader: Any, say: Callable[[str], object]) -> None:
        assert self.directory is not None
        path = self.directory / _LAST
        ck = _load(path)
        if not isinstance(ck, dict) or ck.get("format") != _FORMAT:
            raise CheckpointError(
                f"{str(path)!r} is not a prunekit fine-tuning checkpoint; use another "
                "checkpoint_dir, or resume=False to overwrite it"
            )
        _check_fingerprint(ck["fingerprint"], self.fingerprint, path)
        _check_config(ck["config"], self.config, path)
        self.model.load_state_dict(ck["model"])
        try:
            self.optimizer.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(
                f"the optimizer state in {str(path)!r} does not fit this model's trainable "
                f"parameters ({exc}); were other layers frozen?"
            ) from None
        self.scheduler.load_state_dict(ck["scheduler"])
        self.history = [EpochStats(**h) for h in ck["history"]]
        self.best_epoch = ck["best_epoch"]
        if self.best_epoch is not None:
            score = self.history[self.best_epoch - 1].val_score
            self.best_score = score if score is not None else -math.inf
            self.best_state = _load(_best_path(self.directory, self.best_epoch))
        self.start = int(ck["epoch"])
        self.resumed = True
        _set_rng_state(ck["rng"], train_loader, say)
        say(f"resuming from {path} after epoch {self.start}/{self.config.epochs}")

    def train_epoch(
        self,
        epoch: int,
        train_loader: Iterable[Any],
        on_step: Callable[[int, int, float], object] | None,
    ) -> EpochStats:
        model, optimizer, device = self.model, self.optimizer, self.device
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        samples = steps = 0
        for index, batch in enumerate(train_loader):
            if index >= self.steps_per_epoch:
                break
            inputs, labels = _split(batch, index)
            inputs, labels = _to_device(inputs, device), labels.to(device)
            teacher_out = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_out = self.teacher(inputs)
            loss = self.criterion(model(inputs), teacher_out, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.scheduler.step()
            n = int(labels.shape[0])
            loss_sum += loss.detach().double() * n
            samples += n
            steps += 1
            if on_step is not None:
                on_step(epoch, index, float(loss.detach()))
        if steps == 0:
            raise DataError(f"the train loader yielded no batch in epoch {epoch}")
        train_loss = float(loss_sum) / samples
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"the training loss became {train_loss} in epoch {epoch}: lower the learning "
                "rate (the model's weights are no longer usable; resume from the last checkpoint)"
            )
        return EpochStats(epoch, train_loss, steps, float(optimizer.param_groups[0]["lr"]))

    def validate(
        self,
        stats: EpochStats,
        val_loader: Iterable[Any] | None,
        evaluate: Callable[[nn.Module], float] | None,
    ) -> EpochStats:
        if val_loader is not None:
            metrics = evaluate_classification(
                self.model,
                val_loader,
                device=self.device,
                topk=(1,),
                max_batches=self.config.val_max_batches,
            )
            stats = replace(
                stats, val_top1=metrics.top1, val_loss=metrics.loss, val_score=metrics.top1
            )
        if evaluate is not None:
            self.model.eval()
            try:
                with torch.no_grad():
                    stats = replace(stats, val_score=float(evaluate(self.model)))
            finally:
                self.model.train()
        return stats

    def record(self, stats: EpochStats) -> bool:
        """Append ``stats``; keep the weights if they are the best so far (True then)."""
        self.history.append(stats)
        score = stats.val_score
        if score is None or (self.best_epoch is not None and not score > self.best_score):
            return False
        self.best_epoch, self.best_score = stats.epoch, score
        self.best_state = _cpu_copy(self.model.state_dict())
        return True

    def save(self, train_loader: Any, improved: bool) -> None:
        """Checkpoint after an epoch: the best weights first (if new), then ``last.pt``."""
        if self.directory is None:
            return
        epoch = self.history[-1].epoch
        best = _best_path(self.directory, epoch)
        if improved and self.best_state is not None:
            _save_atomic(self.best_state, best)
        checkpoint = {
            "format": _FORMAT,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(train_loader),
            "history": [asdict(h) for h in self.history],
            "best_epoch": self.best_epoch,
            "fingerprint": self.fingerprint,
            "config": self.config.to_dict(),
        }
        _save_atomic(checkpoint, self.directory / _LAST)
        if improved:  # only now is the older best file unreferenced
            _remove_best_files(self.directory, keep=best)


def _describe(stats: EpochStats, epochs: int) -> str:
    text = f"epoch {stats.epoch}/{epochs}: train loss {stats.train_loss:.4f}, lr {stats.lr:.3g}"
    if stats.val_top1 is not None:
        text += f", val top-1 {stats.val_top1:.4f}"
    if stats.val_score is not None and stats.val_score != stats.val_top1:
        text += f", val score {stats.val_score:.4f}"
    return text
