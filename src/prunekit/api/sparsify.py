"""``pk.sparsify_``: unstructured or N:M sparsity for any model, one-shot or gradual.

Individual weights of every Linear / Conv layer (``--layers`` / ``--ignore`` choose) are set
to zero; shapes stay. How sparse each layer gets (``allocation``): ``uniform``, ``global``
(one magnitude ranking, each layer keeping at least ``floor`` of its weights) or
``sensitivity`` (per-layer drop curves measured on a validation share of the fit data; the
least summed drop that meets the target). ``nm=(2, 4)`` keeps the 2 largest of every 4
consecutive weights along the input dimension (what sparse tensor cores run).

Schedules: ``oneshot`` prunes to the target at once, then fine-tunes (when ``data`` is given
and training is asked for) with the masks held; ``gradual`` raises sparsity along Zhu &
Gupta's cubic ramp during the first ``ramp`` share of training, distilling from the dense
model, and keeps fine-tuning at the final sparsity for the rest. The best epoch is chosen on a
validation share of the fit data among epochs at the final sparsity only; the held-out eval
part is never trained or chosen on.

At the end the masks are made permanent: the model holds plain zeros, no hook is left.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from prunekit.api._config import ConfigError, VerbConfig, choice, number, positive_int

SCHEDULES = ("oneshot", "gradual")
# virtual steps of the cubic ramp (progress is a fraction of training; see _RampDriver)
_RAMP_STEPS = 1000
_RAMP_UPDATES = 20


@dataclass(frozen=True)
class SparsifyConfig(VerbConfig):
    """What ``sparsify_`` does. Exactly one of ``sparsity`` (fraction of the targeted weights
    set to zero, in (0, 1)) and ``nm`` (``(n, m)``: n kept of every m) is given.
    ``epochs`` / ``seconds``: fine-tuning length (neither: no training, masks only; a gradual
    schedule needs one). ``ramp``: the share of training over which a gradual schedule
    ramps. ``floor``: the least density any layer keeps. ``layers`` / ``ignore``: glob or
    module-prefix patterns choosing the targeted layers. Training settings as ``RecoverConfig``.
    """

    sparsity: float | None = None
    nm: tuple[int, int] | None = None
    schedule: str = "oneshot"
    allocation: str = "global"
    floor: float = 0.01
    layers: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    epochs: int | None = None
    seconds: float | None = None
    ramp: float = 0.75
    lr: float | None = None  # 0.01 (SGD on labels); 2e-4 (AdamW) distilling sentence embeddings
    optimizer: str = "sgd"
    batch_size: int = 64
    weight_decay: float = 0.0
    kd_temperature: float = 4.0
    kd_alpha: float = 0.7
    validation: float = 0.1
    sensitivity_samples: int = 256
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        from prunekit.sparsity.allocation import ALLOCATIONS

        if (self.sparsity is None) == (self.nm is None):
            raise ConfigError("give exactly one of sparsity (e.g. 0.9) and nm (e.g. (2, 4))")
        if self.sparsity is not None:
            ok = not isinstance(self.sparsity, bool) and isinstance(self.sparsity, (int, float))
            if not ok or not 0.0 < self.sparsity < 1.0:
                raise ConfigError(
                    f"sparsity must be a number in (0, 1) (0.9 = 90% of the weights set to "
                    f"zero), got {self.sparsity!r}"
                )
        if self.nm is not None:
            parts = tuple(self.nm)
            if (
                len(parts) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) for v in parts)
                or not 0 < parts[0] < parts[1]
            ):
                raise ConfigError(
                    f"nm must be two integers N < M (N kept of every M), e.g. 2:4, got {self.nm!r}"
                )
            object.__setattr__(self, "nm", parts)
        choice(self.schedule, "schedule", SCHEDULES)
        choice(self.allocation, "allocation", ALLOCATIONS)
        number(self.floor, "floor", low=0, high=1, strict=True)
        number(self.ramp, "ramp", low=0, high=1, strict=True)
        positive_int(self.sensitivity_samples, "sensitivity_samples")
        # the training fields are RecoverConfig's: it checks them (one set of rules)
        self.recover_config()
        for name in ("layers", "ignore"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must be a list of patterns, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.schedule == "gradual" and self.trains is False:
            raise ConfigError("a gradual schedule prunes while training: give epochs or seconds")

    @property
    def trains(self) -> bool:
        return self.epochs is not None or self.seconds is not None

    @property
    def target(self) -> float:
        """The overall sparsity aimed at (N:M: 1 - N/M)."""
        if self.nm is not None:
            return 1.0 - self.nm[0] / self.nm[1]
        assert self.sparsity is not None
        return float(self.sparsity)

    def recover_config(self) -> Any:
        """The ``RecoverConfig`` the fine-tune runs with (the training fields, checked)."""
        from prunekit.api.recover import RecoverConfig

        return RecoverConfig(
            epochs=self.epochs if self.epochs is not None else 1000, seconds=self.seconds,
            lr=self.lr if self.lr is not None else 0.01, optimizer=self.optimizer, batch_size=self.batch_size,
            weight_decay=self.weight_decay, kd_temperature=self.kd_temperature,
            kd_alpha=self.kd_alpha, validation=self.validation, seed=self.seed,
            device=self.device,
        )  # fmt: skip


# --- targets and allocation ----------------------------------------------------------------


def _targets(model: nn.Module, config: SparsifyConfig, log: Callable[[str], object]) -> tuple[
    dict[str, nn.Parameter], dict[str, str]
]:  # fmt: skip
    """The tensors to sparsify, and those skipped with the reason (N:M needs divisible input
    dimensions: a layer the user named explicitly that cannot take it is an error)."""
    from prunekit.sparsity.allocation import nm_eligible, target_weights
    from prunekit.sparsity.masks import SparsityError

    weights = target_weights(model, ignore=config.ignore, only=config.layers)
    skipped: dict[str, str] = {}
    if config.nm is not None:
        n, m = config.nm
        bad = {name: w for name, w in weights.items() if not nm_eligible(w, m)}
        if bad and config.layers:
            name, w = next(iter(bad.items()))
            raise SparsityError(
                f"{n}:{m} sparsity needs the input dimension (dim 1) divisible by {m}; layer "
                f"{name.removesuffix('.weight')} has weight shape {tuple(w.shape)}"
            )
        for name, w in bad.items():
            skipped[name] = (
                f"input dimension {w.shape[1]} of shape {tuple(w.shape)} not divisible by {m}"
            )
            del weights[name]
        if skipped:
            log(f"{n}:{m}: {len(skipped)} layer(s) left dense (input dimension not divisible by "
                f"{m}): {', '.join(s.removesuffix('.weight') for s in list(skipped)[:6])}"
                + (" ..." if len(skipped) > 6 else ""))  # fmt: skip
        if not weights:
            raise SparsityError(f"no layer of this model can take {n}:{m} sparsity")
    return weights, skipped


def _allocate(
    config: SparsifyConfig,
    weights: Mapping[str, Tensor],
    curves: Mapping[str, Mapping[float, float]] | None,
) -> dict[str, float]:
    from prunekit.sparsity.allocation import (
        allocate_global,
        allocate_sensitivity,
        allocate_uniform,
    )

    sizes = {name: w.numel() for name, w in weights.items()}
    target = config.target
    if config.nm is not None:
        return allocate_uniform(sizes, target, 0.0)
    if config.allocation == "uniform":
        return allocate_uniform(sizes, target, config.floor)
    if config.allocation == "global":
        return allocate_global(weights, target, config.floor)
    assert curves is not None
    return allocate_sensitivity(curves, sizes, target, config.floor)


def _curves(
    model: nn.Module,
    weights: Mapping[str, nn.Parameter],
    config: SparsifyConfig,
    task: Any,
    sensitivity: str | Path | None,
    model_name: str,
    log: Callable[[str], object],
) -> tuple[dict[str, dict[float, float]], dict[str, Any]]:
    from prunekit.sparsity.masks import SparsityError
    from prunekit.sparsity.sensitivity import (
        measure_layer_sensitivity,
        read_layer_sensitivity,
    )

    if task is None:
        if sensitivity is None or not Path(sensitivity).exists():
            raise SparsityError(
                "--allocation sensitivity needs per-layer curves: give --data to measure them "
                "(and --sensitivity FILE to keep them), or an existing --sensitivity FILE"
            )
        return read_layer_sensitivity(sensitivity, weights), {"file": str(sensitivity)}
    metric, settings = task.sensitivity_metric(model)
    began = time.perf_counter()
    curves = measure_layer_sensitivity(model, weights, metric, path=sensitivity,
                                       settings=settings, model_name=model_name, log=log)  # fmt: skip
    info = {**settings, "seconds": round(time.perf_counter() - began, 2)}
    if sensitivity is not None:
        info["file"] = str(sensitivity)
    return curves, info


# --- the gradual ramp, driven from the recovery engine's steps -----------------------------


class _RampDriver:
    """Moves a ``GradualPruner`` along the cubic ramp as training progresses.

    Progress is the larger of steps done / steps planned and seconds spent / seconds allowed,
    so the ramp ends at ``ramp`` of the training whichever bound applies; the pruner's
    schedule counts virtual steps (``_RAMP_STEPS`` over the ramp, ``_RAMP_UPDATES`` mask
    updates)."""

    def __init__(self, pruner: Any, ramp: float, total_steps: int | None, seconds: float | None):
        self.pruner = pruner
        self.ramp = ramp
        self.total_steps = total_steps
        self.seconds = seconds
        self.steps = 0
        self.began = time.perf_counter()
        pruner.step()  # the update at step 0 (sparsity 0: every weight kept)

    def progress(self) -> float:
        done = 0.0
        if self.total_steps:
            done = self.steps / self.total_steps
        if self.seconds:
            done = max(done, (time.perf_counter() - self.began) / self.seconds)
        return done

    def __call__(self, epoch: int, step: int, loss: float) -> None:
        self.steps += 1
        virtual = min(_RAMP_STEPS, int(self.progress() / self.ramp * _RAMP_STEPS))
        while self.pruner.step_count <= virtual:
            self.pruner.step()

    @property
    def done(self) -> bool:
        return self.pruner.step_count > _RAMP_STEPS

    def finish(self) -> None:
        while not self.done:
            self.pruner.step()


# --- the verb ------------------------------------------------------------------------------


def sparsify_(
    model: nn.Module,
    config: SparsifyConfig,
    *,
    data: Any = None,
    teacher: nn.Module | None = None,
    sensitivity: str | Path | None = None,
    example: Any = None,
    model_name: str = "",
    record: dict[str, Any] | None = None,
    log: Callable[[str], object] | None = None,
    on_step: Callable[[int, int, float], object] | None = None,
    tokenizer: Any = None,
) -> None:
    """Sparsify ``model`` in place (see the module docstring); returns None.

    ``data``: a data spec or ``Data`` (needed to train, to measure sensitivity curves and to
    report a held-out metric). ``teacher``: the model to distil from while training (default:
    a copy of ``model`` taken before any weight is zeroed). ``sensitivity``: a JSON file of
    per-layer curves; read if complete, measured into (and resumed) otherwise. ``record``
    receives what ``sparsify.json`` holds. ``tokenizer``: with sentence data (a sentence
    encoder), training distils the dense model's embeddings and hidden states and the metric
    is the embeddings' fidelity on the held-out sentences."""
    from prunekit._checks import check_module
    from prunekit.api._sparsify_tasks import task_for
    from prunekit.api.data import as_data
    from prunekit.sparsity import CubicSchedule, GradualPruner, MaskSet, magnitude_masks, nm_mask

    check_module(model)
    if not isinstance(config, SparsifyConfig):
        raise ConfigError(f"sparsify_ needs a SparsifyConfig, got {type(config).__name__}")
    say: Callable[[str], object] = log or (lambda _: None)
    resolved = as_data(data, example=example, seed=config.seed) if data is not None else None
    task = task_for(resolved, config, tokenizer, example)
    if task is not None and getattr(task, "example", None) is not None:
        example = task.example
    weights, skipped = _targets(model, config, say)
    dense_teacher = teacher
    if config.trains and teacher is None and (config.kd_alpha > 0 or task.needs_teacher):
        dense_teacher = copy.deepcopy(model).eval()
    dense_metric = task.measure(model) if task is not None else None
    curves, sensitivity_info = None, None
    if config.allocation == "sensitivity" and config.nm is None:
        curves, sensitivity_info = _curves(model, weights, config, task, sensitivity,
                                           model_name, say)  # fmt: skip
    shares = _allocate(config, weights, curves)
    began = time.perf_counter()
    fit_record: dict[str, Any] = {}
    ramp_completed = None
    if config.schedule == "oneshot":
        if config.nm is not None:
            n, m = config.nm
            masks = {name: nm_mask(w, n, m, dim=1) for name, w in weights.items()}
        else:
            masks = magnitude_masks(weights, shares, "layer")
        mask_set = MaskSet(model, masks)
        mask_set.apply()
        if config.trains:
            assert task is not None
            mask_set.hold_gradients()  # the engine owns the optimizer: on_step re-applies
            try:
                task.train(model, dense_teacher, fit_record, say,
                           _chain(lambda *a: mask_set.apply(), on_step), None)  # fmt: skip
            finally:
                mask_set.make_permanent()
        else:
            mask_set.make_permanent()
    else:
        assert task is not None
        n_m = config.nm
        finals = (
            dict.fromkeys(weights, 0.5 * config.target)  # the N:M cut comes at the ramp's end
            if n_m is not None
            else shares
        )
        top = max(finals.values())
        schedule = CubicSchedule(0.0, top, 0, _RAMP_STEPS, _RAMP_STEPS // _RAMP_UPDATES)
        pruner = GradualPruner(model, schedule, list(weights), scope="layer",
                               final_sparsity_by_name=finals, nm=n_m)  # fmt: skip
        total = config.epochs * task.steps_per_epoch() if config.epochs is not None else None
        driver = _RampDriver(pruner, config.ramp, total, config.seconds)
        pruner.mask_set.hold_gradients()
        try:
            task.train(model, dense_teacher, fit_record, say,
                       _chain(_then_apply(driver, pruner.mask_set), on_step),
                       lambda: driver.done)  # fmt: skip
            ramp_completed = driver.done
            if not driver.done:
                say("the training ended before the sparsity ramp did: the rest was pruned in one "
                    "step at the end (give more --epochs/--seconds or a shorter --ramp)")  # fmt: skip
                driver.finish()
        finally:
            pruner.make_permanent()
    seconds = time.perf_counter() - began
    model.eval()
    _fill_record(record, model, config, weights, skipped, shares, task, dense_metric,
                 sensitivity_info, fit_record, ramp_completed, seconds)  # fmt: skip


def _chain(*hooks: Any) -> Callable[[int, int, float], None]:
    def call(epoch: int, step: int, loss: float) -> None:
        for hook in hooks:
            if hook is not None:
                hook(epoch, step, loss)

    return call


def _then_apply(driver: _RampDriver, mask_set: Any) -> Callable[[int, int, float], None]:
    def call(epoch: int, step: int, loss: float) -> None:
        driver(epoch, step, loss)
        mask_set.apply()  # the optimizer step may have moved pruned weights (weight decay)

    return call


def _fill_record(
    record: dict[str, Any] | None,
    model: nn.Module,
    config: SparsifyConfig,
    weights: Mapping[str, Tensor],
    skipped: Mapping[str, str],
    shares: Mapping[str, float],
    task: Any,
    dense_metric: Mapping[str, Any] | None,
    sensitivity_info: Mapping[str, Any] | None,
    fit_record: Mapping[str, Any],
    ramp_completed: bool | None,
    seconds: float,
) -> None:
    from prunekit.report.masks import layer_sparsity
    from prunekit.sparsity.masks import holds_nm
    from prunekit.sparsity.storage import layer_storage, storage_totals

    if record is None:
        return
    zeros = sum(int((w.detach() == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    facts = {row["name"]: row for row in layer_sparsity(model)}
    layers = []
    for name, w in weights.items():
        module = name.removesuffix(".weight")
        pattern = facts.get(module, {}).get("pattern", "unstructured")
        if config.nm is not None and holds_nm(w, *config.nm):
            # what was applied, not what a reader of the weights can infer (1:2 reads as 2:4,
            # and 3:4 is beyond the hardware patterns the reader looks for)
            pattern = f"{config.nm[0]}:{config.nm[1]}"
        layers.append({**layer_storage(module, w, pattern),
                       "planned_sparsity": round(float(shares[name]), 6)})  # fmt: skip
    metric: dict[str, Any] = {"dense": None, "final": None, "split": None, "samples": None}
    if dense_metric is not None and task is not None:
        final = task.measure(model)
        key = task.key
        metric = {"name": key, "dense": dense_metric[key], "final": final[key], "split": "eval",
                  "samples": final["samples"], "data": task.data.spec,
                  "dense_all": {k: v for k, v in dense_metric.items() if isinstance(v, float)},
                  "final_all": {k: v for k, v in final.items() if isinstance(v, float)}}  # fmt: skip
    record.update({
        "sparsity": zeros / total if total else 0.0,
        "target": config.target,
        "nm": list(config.nm) if config.nm else None,
        "layers": layers,
        "skipped": [{"name": n.removesuffix(".weight"), "reason": r} for n, r in skipped.items()],
        "metric": metric,
        "schedule": config.schedule,
        "allocation": "nm" if config.nm else config.allocation,
        "floor": config.floor,
        "config": config.to_dict(),
        "sensitivity": dict(sensitivity_info) if sensitivity_info else None,
        "finetune": dict(fit_record) if fit_record else None,
        "ramp_completed": ramp_completed,
        "seconds": round(seconds, 2),
        "storage": {**storage_totals(layers),
                    "note": "bytes of the sparsified tensors only, at their dtype"},
        "targeted_weights": total,
        "nonzero_weights": total - zeros,
    })  # fmt: skip
