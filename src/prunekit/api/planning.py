"""``pk.sensitivity`` and ``pk.plan``: how much each group can lose, and the cut that meets a
budget with the least predicted damage. Both measure on ``data``'s fit part only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.api._config import VerbConfig, choice, number, positive_int

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class SensitivityConfig(VerbConfig):
    """``samples`` calibration inputs from the fit part (random inputs without data) measure
    the output divergence of removing ``ratios`` of each group alone; ``blocks``: also
    dropping each residual block."""

    samples: int = 64
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    blocks: bool = True

    def __post_init__(self) -> None:
        positive_int(self.samples, "samples")
        object.__setattr__(self, "ratios", tuple(self.ratios))
        if not self.ratios:
            from prunekit.api._config import ConfigError

            raise ConfigError("ratios must list at least one fraction in (0, 1)")
        for r in self.ratios:
            number(r, "ratios", low=0, high=0.999, strict=True)


@dataclass(frozen=True)
class PlanConfig(VerbConfig):
    """``round_to``: keep a multiple of N channels per group; ``protect``: module names or
    ``re:`` patterns left whole; ``blocks``: allow dropping residual blocks."""

    round_to: int = 1
    protect: tuple[str, ...] = ()
    importance: str = "l1"
    blocks: bool = True
    latency_weight: float = 0.0

    def __post_init__(self) -> None:
        positive_int(self.round_to, "round_to")
        object.__setattr__(self, "protect", tuple(self.protect))
        from prunekit.api.prune import IMPORTANCE

        choice(self.importance, "importance", IMPORTANCE)
        number(self.latency_weight, "latency_weight", low=0)


def sensitivity(
    model: nn.Module,
    example: Any,
    *,
    data: Any = None,
    config: SensitivityConfig | None = None,
    cache: str | Path | None = None,
    settings: dict[str, Any] | None = None,
    model_name: str = "",
    metric: Any = None,
    log: Any = None,
) -> Any:
    """Per-group sensitivity (``prunekit.planning.Sensitivity``); the model is left unchanged.
    ``cache``: a resumable JSON file. ``metric``: a callable ``model -> drop`` (higher =
    worse, e.g. ``prunekit.evaluate.tasks.TaskDrop``) measured on the fit part; default: the
    output divergence from the dense model on ``config.samples`` fit inputs."""

    from prunekit.graph import trace_channels
    from prunekit.inputs import as_example_inputs
    from prunekit.planning.sensitivity import OutputDivergence, analyze_sensitivity

    config = config or SensitivityConfig()
    example = as_example_inputs(example)
    batches = sensitivity_batches(example, data, config.samples)
    was = model.training
    model.eval()
    try:
        graph = trace_channels(model, example)
        if metric is None:
            metric = OutputDivergence(model, batches)
        recorded = {**(settings or {}), **config.to_dict(),
                    "data": getattr(data, "spec", data) if data is not None else "random inputs"}  # fmt: skip
        return analyze_sensitivity(model, example, graph, metric, ratios=config.ratios,
                                   cache=cache, model_name=model_name, blocks=config.blocks,
                                   block_batches=batches, settings=recorded,
                                   log=log or (lambda _: None))  # fmt: skip
    finally:
        model.train(was)


def sensitivity_batches(example: Any, data: Any, samples: int) -> list[Any]:
    """The inputs the default sensitivity metric compares outputs on: ``samples`` fit inputs
    of ``data``, or seeded random inputs shaped like ``example`` without data."""
    import torch

    from prunekit.api.prune import calibration_inputs

    if data is not None:
        return list(calibration_inputs(data, samples, example))
    # random inputs: a much weaker proxy, said in the sensitivity file's settings
    generator = torch.Generator().manual_seed(0)
    return [torch.randn((samples, *t.shape[1:]), generator=generator) for t in example.args[:1]]


def plan(
    model: nn.Module,
    example: Any,
    target: Any,
    *,
    sensitivity: Any = None,
    data: Any = None,
    config: PlanConfig | None = None,
    lut: Any = None,
    log: Any = None,
    option: str = "protect",
) -> Any:
    """A ``Plan`` meeting ``target`` (``"macs=0.5"``, ``"params=0.4"``, ``"bytes=2MB"``,
    ``"latency_ms=12"`` with ``lut``, or a ``Target``). ``sensitivity``: a ``Sensitivity`` or
    its file; measured here (on ``data``'s fit part) when omitted. Apply it with
    ``pk.prune_(model, example, PlanPruning(plan))``."""
    from prunekit.graph import trace_channels
    from prunekit.inputs import as_example_inputs
    from prunekit.planning.planner import Target, make_plan
    from prunekit.planning.sensitivity import Sensitivity
    from prunekit.pruning.config import as_patterns, check_patterns_match

    config = config or PlanConfig()
    example = as_example_inputs(example)
    goal = target if isinstance(target, Target) else Target.parse(str(target))
    if sensitivity is None:
        sensitivity = globals()["sensitivity"](model, example, data=data, log=log)
    elif not isinstance(sensitivity, Sensitivity):
        sensitivity = Sensitivity.load(sensitivity)
    names = sorted(n for n, _ in model.named_modules() if n)
    protect = as_patterns(config.protect, names)
    check_patterns_match(protect, names, option)  # option: how the caller names it
    was = model.training
    model.eval()
    try:
        graph = trace_channels(model, example)
        return make_plan(model, example, graph, sensitivity, goal, lut=lut,
                         round_to=config.round_to, protect=protect,
                         importance=config.importance, latency_weight=config.latency_weight,
                         blocks=config.blocks, log=log or (lambda _: None))  # fmt: skip
    finally:
        model.train(was)
