"""Gradual magnitude pruning during fine-tuning (Zhu & Gupta 2017, "To prune, or not to prune").

Pruning a large fraction of weights at once destroys accuracy that fine-tuning then has to
recover; raising sparsity gradually lets the network adapt between small steps. The cubic
schedule prunes fast while many redundant weights remain and slowly near the end:

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (end - t0)) ** 3

evaluated only at update steps ``t0, t0 + frequency, ...`` and ``end`` (held in between).
``GradualPruner`` drives a ``MaskSet`` from the user's own training loop: call
``pruner.step()`` once per optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from prunekit._checks import check_callable, check_module, got
from prunekit.sparsity.masks import (
    MaskSet,
    Scope,
    SparsityError,
    SparsityTypeError,
    SparsityValueError,
    _check_nm,
    _check_nm_shape,
    _check_scope,
    _check_sparsity,
    _nm_keep,
    _unknown_names_error,
    magnitude_masks,
)

__all__ = ["CubicSchedule", "GradualPruner"]

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_step(value: Any, what: str, minimum: int) -> int:
    message = f"{what} must be an integer >= {minimum}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise SparsityTypeError(message)
    if value < minimum:
        raise SparsityValueError(message)
    return value


@dataclass(frozen=True)
class CubicSchedule:
    """Sparsity ramping from ``initial_sparsity`` to ``final_sparsity`` along a cubic curve.

    Before ``begin_step`` nothing is pruned (0.0); from ``end_step`` on the sparsity is exactly
    ``final_sparsity``. ``begin_step == end_step`` means one-shot pruning at that step.
    """

    initial_sparsity: float
    final_sparsity: float
    begin_step: int
    end_step: int
    frequency: int

    def __post_init__(self) -> None:
        _check_sparsity(self.initial_sparsity, "initial_sparsity")
        _check_sparsity(self.final_sparsity, "final_sparsity")
        if self.initial_sparsity > self.final_sparsity:
            raise SparsityValueError(
                f"initial_sparsity ({self.initial_sparsity}) must not exceed "
                f"final_sparsity ({self.final_sparsity})"
            )
        _check_step(self.begin_step, "begin_step", 0)
        _check_step(self.end_step, "end_step", self.begin_step)
        _check_step(self.frequency, "frequency", 1)

    def _last_update(self, step: int) -> int:
        """The latest update step at or before ``step`` (for ``begin_step <= step < end_step``)."""
        return self.begin_step + (step - self.begin_step) // self.frequency * self.frequency

    def _remaining(self, step: int) -> float:
        """``(1 - progress) ** 3`` at the last update step, for ``begin_step <= step < end_step``."""
        progress = (self._last_update(step) - self.begin_step) / (self.end_step - self.begin_step)
        return (1.0 - progress) ** 3

    def sparsity_at(self, step: int) -> float:
        """Target sparsity in effect at ``step``."""
        if step < self.begin_step:
            return 0.0
        if step >= self.end_step:
            # returned as given rather than computed, so the final target is hit exactly
            return self.final_sparsity
        s_i, s_f = self.initial_sparsity, self.final_sparsity
        return s_f + (s_i - s_f) * self._remaining(step)

    def ramp_at(self, step: int) -> float:
        """The curve's shape alone: 0 before the start, ``1 - (1 - progress)**3``, 1 at the end."""
        if step < self.begin_step:
            return 0.0
        if step >= self.end_step:
            return 1.0
        return 1.0 - self._remaining(step)

    def is_update_step(self, step: int) -> bool:
        """True at ``begin_step``, every ``frequency`` steps after it, and at ``end_step``."""
        if not self.begin_step <= step <= self.end_step:
            return False
        return step == self.end_step or (step - self.begin_step) % self.frequency == 0


def _default_parameters(model: nn.Module) -> list[str]:
    """The ``weight`` of every Linear and Conv{1,2,3}d: where almost all parameters live."""
    return [
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, _PRUNABLE)
    ]


def _nm_dim(param: Tensor) -> int:
    # the input (reduction) dimension: what sparse tensor cores need for Linear and Conv
    return 1 if param.dim() >= 2 else 0


class GradualPruner:
    """Prunes ``model`` step by step along a ``CubicSchedule`` while the user trains it.

    ``parameters``: qualified names to prune (default: every Linear / Conv weight).
    ``scope="global"`` ranks all of them together; ``"layer"`` prunes each to the target.
    ``final_sparsity_by_name`` (needs ``scope="layer"``): per-parameter final sparsities, each
    following the schedule's curve scaled to it, ``s(t) = s_sched(t) / s_f * s_name``;
    parameters not named follow the schedule itself.
    ``nm=(n, m)``: groups run along the input dimension (dim 1; dim 0 for 1-D tensors).
    Before ``end_step`` the ramp prunes unstructured but never the ``n`` best survivors of a
    group; at ``end_step`` every group is cut to those ``n``, so the result is exactly N:M
    (``n`` non-zeros in every group, as ``nm_mask`` gives). The ramp can therefore not go past
    ``1 - n/m``; keep ``final_sparsity`` below it to let most of the pruning happen gradually.
    ``score``: importance of every weight, from the pruned parameters by name (default
    ``|w|``); e.g. ``prunekit.mcu.compress.neuron_scores``.

    Masks only grow: a weight pruned at one update stays pruned at every later one.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: CubicSchedule,
        parameters: Sequence[str] | None = None,
        scope: Scope = "global",
        final_sparsity_by_name: Mapping[str, float] | None = None,
        nm: tuple[int, int] | None = None,
        score: Callable[[Mapping[str, Tensor]], Mapping[str, Tensor]] | None = None,
    ) -> None:
        check_module(model)
        if not isinstance(schedule, CubicSchedule):
            raise SparsityTypeError(
                "schedule must be a prunekit.sparsity.CubicSchedule, such as CubicSchedule("
                "initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=1000, "
                f"frequency=100), got {got(schedule)}"
            )
        _check_scope(scope)
        if final_sparsity_by_name is not None and not isinstance(final_sparsity_by_name, Mapping):
            raise SparsityTypeError(
                "final_sparsity_by_name must be a dict of parameter names to sparsities, or "
                f"None, got {got(final_sparsity_by_name)}"
            )
        check_callable(score, "score", "a function (parameters by name) -> scores", optional=True)
        self._score = score
        self._model = model
        self._schedule = schedule
        self._scope: Scope = scope
        self._names = self._resolve_names(model, parameters)
        self._params = {name: self._param_lookup()[name] for name in self._names}
        self._finals = self._resolve_finals(final_sparsity_by_name)
        self._nm = self._resolve_nm(nm)
        self._step = 0
        all_kept = {name: torch.ones_like(p, dtype=torch.bool) for name, p in self._params.items()}
        self._mask_set = MaskSet(model, all_kept)

    # --- construction helpers ----------------------------------------------------------------

    def _param_lookup(self) -> dict[str, nn.Parameter]:
        return dict(self._model.named_parameters(remove_duplicate=False))

    def _resolve_names(self, model: nn.Module, parameters: Sequence[str] | None) -> list[str]:
        if isinstance(parameters, str):
            raise SparsityTypeError(
                f"parameters must be a sequence of names, not the string {parameters!r}"
            )
        if parameters is not None and (
            not isinstance(parameters, Iterable)
            or not hasattr(parameters, "__len__")
            or not all(isinstance(name, str) for name in parameters)
        ):
            raise SparsityTypeError(
                "parameters must be a sequence of parameter names such as ['fc.weight'], or "
                f"None, got {got(parameters)}"
            )
        if parameters is None:
            names = _default_parameters(model)
            if not names:
                raise SparsityError(
                    "the model has no nn.Linear or nn.Conv*d weight to prune; pass parameters=[...]"
                )
            return names
        valid = self._param_lookup()
        unknown = set(parameters) - set(valid)
        if unknown:
            raise _unknown_names_error(unknown, valid, "parameter name(s)")
        if not parameters:
            raise SparsityError("parameters is empty; name at least one parameter to prune")
        return list(dict.fromkeys(parameters))  # drop duplicates, keep the order

    def _resolve_finals(self, by_name: Mapping[str, float] | None) -> dict[str, float]:
        s_f = self._schedule.final_sparsity
        if by_name is None:
            return dict.fromkeys(self._names, s_f)
        if self._scope != "layer":
            raise SparsityError(
                "final_sparsity_by_name sets per-layer targets, which needs scope='layer'"
            )
        unknown = set(by_name) - set(self._names)
        if unknown:
            raise _unknown_names_error(
                unknown, self._names, "pruned parameter(s) in final_sparsity_by_name"
            )
        return {
            name: _check_sparsity(by_name.get(name, s_f), f"final sparsity of {name!r}")
            for name in self._names
        }

    def _resolve_nm(self, nm: tuple[int, int] | None) -> tuple[int, int] | None:
        if nm is None:
            return None
        if not isinstance(nm, tuple) or len(nm) != 2:
            raise SparsityTypeError(f"nm must be a pair (n, m) such as (2, 4), got {nm!r}")
        n, m = _check_nm(*nm)
        for name, param in self._params.items():
            _check_nm_shape(param.shape, m, _nm_dim(param), repr(name))
        return n, m

    # --- public API --------------------------------------------------------------------------

    @property
    def schedule(self) -> CubicSchedule:
        return self._schedule

    @property
    def step_count(self) -> int:
        """How many times ``step`` has been called; the next call handles this step."""
        return self._step

    @property
    def masks(self) -> dict[str, Tensor]:
        return self._mask_set.masks

    @property
    def mask_set(self) -> MaskSet:
        return self._mask_set

    def targets_at(self, step: int) -> dict[str, float]:
        """Target sparsity of each pruned parameter at ``step`` (before any N:M constraint)."""
        schedule = self._schedule
        if step >= schedule.end_step:
            return dict(self._finals)  # exact, no rounding through the scaling below
        s_f = schedule.final_sparsity
        if s_f == 0.0:
            # s_i <= s_f = 0: the schedule has no scale to divide by, only its shape
            return {name: final * schedule.ramp_at(step) for name, final in self._finals.items()}
        s_t = schedule.sparsity_at(step)
        return {name: s_t / s_f * final for name, final in self._finals.items()}

    def attach(self, optimizer: Optimizer) -> GradualPruner:
        """Keep pruned weights at zero through ``optimizer``'s steps. Returns self."""
        self._mask_set.attach(optimizer)
        return self

    def detach(self) -> None:
        self._mask_set.detach()

    def step(self) -> float:
        """Advance one training step, pruning further if it is an update step.

        The k-th call (from 0) handles step k, so the final sparsity is reached by the call
        that handles ``end_step``. Returns the schedule's target sparsity at that step.
        """
        step = self._step
        if self._schedule.is_update_step(step):
            self._update_masks(step)
        self._step += 1
        return self._schedule.sparsity_at(step)

    def current_sparsity(self) -> float:
        """Fraction of exact zeros in the pruned parameters, measured on the model."""
        total = sum(p.numel() for p in self._params.values())
        zeros = sum(int((p.detach() == 0).sum()) for p in self._params.values())
        return zeros / total if total else 0.0

    def make_permanent(self) -> dict[str, Tensor]:
        """Apply the masks a last time, remove every hook, and return the masks."""
        return self._mask_set.make_permanent()

    def __enter__(self) -> GradualPruner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.detach()

    # --- mask computation --------------------------------------------------------------------

    def _scores(self, previous: Mapping[str, Tensor]) -> dict[str, Tensor]:
        # already-pruned weights rank below every surviving one (|w| >= 0 > -1), so they are
        # chosen first and never come back, even if something made them non-zero meanwhile
        base = (
            {name: param.detach().abs() for name, param in self._params.items()}
            if self._score is None
            else self._score(self._params)
        )
        return {
            name: torch.where(previous[name], base[name].detach(), -1.0) for name in self._params
        }

    def _unstructured(self, step: int, scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if self._scope == "global":
            return magnitude_masks(self._params, self._schedule.sparsity_at(step), "global", scores)
        return magnitude_masks(self._params, self.targets_at(step), "layer", scores)

    def _with_nm(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert self._nm is not None
        n, m = self._nm
        result = {}
        for name, mask in masks.items():
            param = self._params[name]
            scores = torch.where(mask, param.detach().abs(), -1.0)
            result[name] = mask & _nm_keep(scores, n, m, _nm_dim(param))
        return result

    def _update_masks(self, step: int) -> None:
        previous = self._mask_set.masks
        scores = self._scores(previous)
        fresh = self._unstructured(step, scores)
        if self._nm is not None:
            # the ramp never takes the n best survivors of a group: the N:M cut at the end then
            # finds n in every group (else a group the ramp had cut to 1 of 4 would stay there)
            n, m = self._nm
            fresh = {name: fresh[name] | _nm_keep(scores[name], n, m, _nm_dim(self._params[name]))
                     for name in fresh}  # fmt: skip
        # the ranking already keeps old prunings pruned; the intersection makes it a guarantee
        masks = {name: fresh[name] & previous[name] for name in self._names}
        if self._nm is not None and step == self._schedule.end_step:
            masks = self._with_nm(masks)
        self._mask_set.update(masks)
