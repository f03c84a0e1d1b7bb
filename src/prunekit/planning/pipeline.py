"""Plan several models against one shared latency budget: a perception pipeline (detection,
segmentation, depth) that runs every stage once per frame within, say, 100 ms in total.

Two steps:

1. **Each stage's frontier.** For a ladder of latency targets (fractions of the stage's dense
   predicted latency), the single-model planner (``make_plan`` with the stage's latency
   table) gives the least predicted loss that meets each target. Keeping the points no other
   point beats on both latency and loss gives the stage's trade-off curve: what each
   millisecond given to this stage buys in its metric.
2. **One allocation across stages.** Choose one point per stage minimising the weighted sum
   of predicted losses (``weight`` per stage: how much its metric matters) with the summed
   predicted latency within the budget. This is the single-model planner's problem one level
   up (a multiple-choice knapsack). A Lagrangian with one multiplier over the summed latency
   finds only the points on the frontiers' convex hull; here the stages' frontiers are
   merged exactly instead: the Pareto set of every pair of partial pipelines is the Pareto
   set of their Minkowski sum, so stage by stage the candidates stay few (tens), and the
   best point within the budget is exact over the frontier points.

The uniform baseline (one pruning ratio for every stage, the same budget) is what the plan
must beat; ``uniform_ratio`` finds that ratio from the same latency tables.

Measured, then corrected: a table adds up savings measured one group at a time, which can
promise far more than a heavily pruned model delivers. After measuring, each stage's
``savings_efficiency`` (measured saving / predicted saving) rescales its frontier
(``corrected_stage``, ``CorrectedTable``) and the allocation is made again in measured ms.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prunekit.errors import PrunekitError
from prunekit.planning.lut import PREDICT_FLOOR

# latency targets per stage, as fractions of its dense predicted latency
LADDER = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2,
          0.15, 0.1)  # fmt: skip
# with options timed whole: plans at these fractions of the MACs join the latency ladder's
MACS_LADDER = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
# the uniform ratios timed when the options are measured (``MeasuredTable``)
# (steps of 0.05: the baseline lands within a few percent of the budget, not 10% under it)
UNIFORM_GRID = tuple(round(0.05 * i, 2) for i in range(1, 19))

Log = Callable[[str], None]


class PipelineError(PrunekitError):
    """A pipeline that cannot be planned (a budget below what the stages can reach, ...)."""


@dataclass(frozen=True)
class StagePoint:
    """One option of a stage: its predicted latency (ms) and loss, and the plan behind it
    (None: the dense model)."""

    ms: float
    loss: float
    fraction: float  # the target: of the dense predicted latency (of the MACs: macs_ladder)
    plan: Any = None


@dataclass
class Stage:
    name: str
    weight: float
    dense_ms: float
    points: list[StagePoint] = field(default_factory=list)  # Pareto, ascending latency

    @property
    def fastest(self) -> StagePoint:
        return self.points[0]


@dataclass(frozen=True)
class Allocation:
    budget_ms: float
    choice: dict[str, StagePoint]
    total_ms: float
    weighted_loss: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_ms": self.budget_ms,
            "total_ms_predicted": self.total_ms,
            "weighted_loss": self.weighted_loss,
            "stages": [{"name": name, "predicted_ms": p.ms, "loss": p.loss,
                        "target_fraction": p.fraction} for name, p in self.choice.items()],
        }  # fmt: skip


def pareto(points: Sequence[StagePoint]) -> list[StagePoint]:
    """The points no other beats on both latency and loss, by ascending latency."""
    front: list[StagePoint] = []
    for p in sorted(points, key=lambda p: (p.ms, p.loss)):
        if not front or p.loss < front[-1].loss:
            front.append(p)
    return front


def stage_frontier(
    name: str,
    model: Any,
    example: Any,
    sensitivity: Any,
    lut: Any,
    *,
    weight: float = 1.0,
    ladder: Sequence[float] = LADDER,
    macs_ladder: Sequence[float] = (),
    keep_dominated: bool = False,
    graph: Any = None,
    log: Log = lambda _: None,
    **plan_options: Any,
) -> Stage:
    """The stage's trade-off curve from its sensitivity and latency table (module docstring).
    ``plan_options`` go to ``make_plan`` (``round_to``, ``protect``, ``blocks``, ...).
    ``macs_ladder``: also the plans keeping these fractions of the MACs (channel cuts the
    table may misjudge); ``keep_dominated``: every plan made, not only the Pareto set (for
    options about to be timed whole, where the table's ranking is not trusted)."""
    from prunekit.graph import trace_channels
    from prunekit.planning.planner import Target, TargetUnreachableError, make_plan

    if not (math.isfinite(weight) and weight >= 0):
        raise PipelineError(f"stage {name}: weight must be a number >= 0, got {weight}")
    was = model.training
    model.eval()
    try:
        graph = graph if graph is not None else trace_channels(model, example)
        dense_ms = float(lut.predict({}))
        points = [StagePoint(dense_ms, 0.0, 1.0, None)]
        reuse: dict[str, Any] = {}  # one model, table and scores: count dense costs once
        for fraction in ladder:
            try:
                plan = make_plan(model, example, graph, sensitivity,
                                 Target("latency_ms", fraction * dense_ms), lut=lut,
                                 reuse=reuse, **plan_options)  # fmt: skip
            except TargetUnreachableError:
                break  # the ladder descends: a lower target cannot be met either
            points.append(StagePoint(float(plan.achieved["latency_ms"]),
                                     float(plan.predicted_drop), fraction, plan))  # fmt: skip
        for fraction in macs_ladder:
            try:
                plan = make_plan(model, example, graph, sensitivity, Target("macs", fraction),
                                 lut=lut, reuse=reuse, **plan_options)  # fmt: skip
            except TargetUnreachableError:
                break
            points.append(StagePoint(float(plan.achieved["latency_ms"]),
                                     float(plan.predicted_drop), fraction, plan))  # fmt: skip
    finally:
        model.train(was)
    kept = sorted(points, key=lambda p: (p.ms, p.loss)) if keep_dominated else pareto(points)
    stage = Stage(name, weight, dense_ms, kept)
    log(f"{name}: {len(stage.points)} options, {stage.fastest.ms:.3g} to {dense_ms:.3g} ms "
        "predicted")  # fmt: skip
    return stage


def allocate(stages: Sequence[Stage], budget_ms: float, *, shown_scale: float = 1.0) -> Allocation:
    """The least weighted loss over one point per stage with the predicted latencies summing
    to at most ``budget_ms`` (exact over the stages' points). ``shown_scale``: what turns
    these ms into the ms the user gave (tables predict in their own scale), for the message
    of a budget that cannot be met."""
    if not stages:
        raise PipelineError("a pipeline needs at least one stage")
    if not (math.isfinite(budget_ms) and budget_ms > 0):
        raise PipelineError(f"the budget must be a positive number of ms, got {budget_ms}")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise PipelineError(f"stage names must be unique, got {names}")
    fastest = sum(s.fastest.ms for s in stages)
    if fastest > budget_ms:
        k = shown_scale
        per_stage = ", ".join(f"{s.name} {s.fastest.ms * k:.3g} ms" for s in stages)
        raise PipelineError(
            f"the budget of {budget_ms * k:.4g} ms cannot be met: at the smallest widths "
            f"planned the stages still take {fastest * k:.4g} ms ({per_stage}), "
            f"{(fastest - budget_ms) * k:.3g} ms over; relax the budget or let the stages "
            "prune further (sensitivity ratios, latency tables to smaller widths)"
        )
    # partial pipelines: (ms, weighted loss, choices), kept Pareto and within the budget
    partial: list[tuple[float, float, tuple[StagePoint, ...]]] = [(0.0, 0.0, ())]
    for i, stage in enumerate(stages):
        rest = sum(s.fastest.ms for s in stages[i + 1 :])  # what the later stages need at least
        merged = [(ms + p.ms, loss + stage.weight * p.loss, (*chosen, p))
                  for ms, loss, chosen in partial for p in stage.points
                  if ms + p.ms + rest <= budget_ms + 1e-12]  # fmt: skip
        merged.sort(key=lambda m: (m[0], m[1]))
        partial = []
        for m in merged:
            if not partial or m[1] < partial[-1][1]:
                partial.append(m)
    ms, loss, chosen = min(partial, key=lambda m: (m[1], m[0]))
    return Allocation(budget_ms, dict(zip(names, chosen, strict=True)), ms, loss)


def uniform_ratio(
    stages: Mapping[str, tuple[Any, ...]],
    budget_ms: float,
    *,
    tolerance: float = 1e-3,
    most: float = 0.9,
    ratios: Sequence[float] | None = None,
) -> tuple[float, dict[str, float], bool]:
    """The one fraction of channels removed from every group of every stage whose summed
    predicted latency meets ``budget_ms`` (the least such ratio), each stage's predicted ms at
    it, and whether it meets the budget: where no ratio up to ``most`` does (small models
    whose time is per-layer overhead), the ratio predicted fastest is returned with False.
    ``stages``: name -> (the stage's group sizes ``{key: channels}``, its latency table[, the
    multiple its kept channels are rounded up to]).
    ``ratios``: only these are candidates (tables that know only them: ``MeasuredTable``)."""

    def predicted(ratio: float) -> dict[str, float]:
        out = {}
        for name, (sizes, lut, *rounding) in stages.items():
            kept = uniform_keep(sizes, ratio, rounding[0] if rounding else 1, groups=lut.groups)
            out[name] = float(lut.predict(kept))
        return out

    def total(ratio: float) -> float:
        return sum(predicted(ratio).values())

    if total(0.0) <= budget_ms:
        return 0.0, predicted(0.0), True
    if ratios is not None:
        meeting = [r for r in sorted(ratios) if total(r) <= budget_ms]
        chosen = meeting[0] if meeting else min(ratios, key=total)
        return chosen, predicted(chosen), bool(meeting)
    if total(most) > budget_ms:
        grid = [most * i / 40 for i in range(41)]
        fastest = min(grid, key=total)
        return fastest, predicted(fastest), False
    lo, hi = 0.0, most
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        if total(mid) <= budget_ms:
            hi = mid
        else:
            lo = mid
    return hi, predicted(hi), True


def savings_efficiency(
    dense_measured: float, pruned_measured: float, dense_predicted: float, pruned_predicted: float
) -> float:
    """The share of a stage's predicted saving that the measurement found (all in measured
    ms), clamped to [0.05, 1.5]; 1.0 where almost nothing was predicted to be saved.

    Latency tables add up each group's saving measured alone; on small inputs at batch 1 the
    savings overlap (per-layer overheads, memory effects), and a heavily pruned model saves
    far less than the sum: seen at 0.26-0.43 for MobileNetV2 stages on a 2-core CPU."""
    predicted_saving = dense_predicted - pruned_predicted
    if predicted_saving <= 0.02 * dense_predicted:
        return 1.0
    return min(1.5, max(0.05, (dense_measured - pruned_measured) / predicted_saving))


def corrected_stage(stage: Stage, dense_measured: float, efficiency: float, scale: float) -> Stage:
    """``stage`` in measured ms: each point's predicted saving (``scale``: measured ms per
    table ms) times ``efficiency``, taken from ``dense_measured``."""
    points = []
    for p in stage.points:
        ms = dense_measured - efficiency * (stage.dense_ms - p.ms) * scale
        points.append(StagePoint(ms, p.loss, p.fraction, p.plan))
    return Stage(stage.name, stage.weight, dense_measured, pareto(points))


class CorrectedTable:
    """A latency table read in measured ms with a savings efficiency (``uniform_ratio``)."""

    def __init__(self, lut: Any, dense_measured: float, efficiency: float, scale: float) -> None:
        self.lut, self.groups = lut, lut.groups
        self.dense_measured, self.efficiency, self.scale = dense_measured, efficiency, scale

    def predict(self, kept: Mapping[str, float], dropped: Sequence[str] = ()) -> float:
        saving = float(self.lut.predict({})) - float(self.lut.predict(kept, dropped=dropped))
        corrected = self.dense_measured - self.efficiency * saving * self.scale
        return max(corrected, PREDICT_FLOOR * self.dense_measured)  # as the table's own floor


def uniform_keep(sizes: Mapping[str, int], ratio: float, round_to: int = 1,
                 groups: Any = None) -> dict[str, int]:  # fmt: skip
    """The channels each group keeps with one uniform ``ratio`` removed, as
    ``StructuredPruning(ratio=ratio, round_to=round_to)`` keeps them; only the ``groups`` a
    latency table knows, when given."""
    from prunekit.pruning.select import keep_count

    return {k: keep_count(n, ratio, round_to) for k, n in sizes.items()
            if groups is None or k in groups}  # fmt: skip


def keep_key(keep: Mapping[str, int], dropped: Sequence[str] = ()) -> str:
    """One string per pruned structure (kept channels per group, dropped blocks)."""
    import json

    return json.dumps([sorted(keep.items()), sorted(dropped)])


class MeasuredTable:
    """Latencies measured on whole pruned models, looked up by their structure: ``points``
    maps ``keep_key(kept, dropped)`` to ms, ``dense_ms`` is the unpruned model's. Asked for a
    structure it did not time, it says so (``uniform_ratio`` with ``ratios`` asks only for
    those it timed). ``groups``: every group's full width (kept at it: not pruned)."""

    def __init__(self, groups: Mapping[str, int], dense_ms: float, points: Mapping[str, float]
                 ) -> None:  # fmt: skip
        self.groups, self.dense_ms, self.points = dict(groups), dense_ms, dict(points)

    def predict(self, kept: Mapping[str, float], dropped: Sequence[str] = ()) -> float:
        if not dropped and all(kept.get(k, n) >= n for k, n in self.groups.items()):
            return self.dense_ms
        key = keep_key({k: int(v) for k, v in kept.items()}, dropped)
        if key not in self.points:
            raise PipelineError("this structure was not timed (a measured table knows only the "
                                "structures it measured)")  # fmt: skip
        return self.points[key]


def measured_stage(stage: Stage, dense_ms: float, point_ms: Mapping[int, float]) -> Stage:
    """``stage`` with each point at its measured latency (``point_ms``: index in
    ``stage.points`` -> ms; the dense point at ``dense_ms``), Pareto again: a point the table
    favoured may measure slower than a cheaper one."""
    points = [StagePoint(dense_ms if p.plan is None else point_ms[i], p.loss, p.fraction, p.plan)
              for i, p in enumerate(stage.points)]  # fmt: skip
    return Stage(stage.name, stage.weight, dense_ms, pareto(points))


def predicted_loss(sensitivity: Any, keep: Mapping[str, int]) -> float:
    """The sensitivity-predicted loss of cutting each group to ``keep[group]`` channels (the
    planner's additive model), for a plan made some other way (a uniform ratio)."""
    total = 0.0
    for key, kept in keep.items():
        group = sensitivity.groups.get(key)
        if group is not None and kept < group.size:
            total += float(group.at(kept, "drop"))
    return total


def measure_pipelines(
    variants: Mapping[str, Sequence[tuple[str, Any, Any]]],
    *,
    rounds: int = 5,
    threads: int | None = None,
    device: str = "cpu",
    policy: Any = None,
    backend: str = "eager",
    dtype: str = "float32",
    frames: bool = True,
) -> dict[str, dict[str, Any]]:
    """Time whole pipelines interleaved: ``variants`` maps a name (dense, planned, uniform) to
    its stages ``(stage name, model, example inputs)``, run one after another per frame on
    ``backend`` (each stage its own runtime: an ONNX Runtime session, a compiled module...).
    Each round times every variant's frame and every stage alone, in an order rotating from
    round to round (``measure.compare``'s scheme); medians over rounds, in ms. ``dtype``
    other than float32: each stage is timed as a cast copy (the models keep their weights).
    ``frames=False``: the stages alone (``total_ms`` is then their sum)."""
    import statistics

    import torch

    from prunekit.measure.backends import backend_class
    from prunekit.measure.compare import ROUND_POLICY, round_orders
    from prunekit.measure.latency import (
        DTYPES,
        intra_op_threads,
        resolve_device,
        time_calls,
        timer_for,
    )

    dev = resolve_device(device)
    timer = timer_for(dev)
    n_threads = threads or torch.get_num_threads()
    calls: dict[str, Callable[[], Any]] = {}  # "variant/stage"; "variant/" is the frame
    runtimes: list[Any] = []
    timed: dict[str, list[float]] = {}
    try:
        with intra_op_threads(n_threads):
            for variant, stages in variants.items():
                for stage, model, example in stages:
                    if dtype == "float32":
                        timed_model, inputs = model.eval().to(dev), example.to(dev)
                    else:
                        cast = DTYPES[dtype]
                        timed_model = copy.deepcopy(model).eval().to(dev, cast)
                        inputs = example.to(dev, cast)
                    runtime = backend_class(backend)(timed_model, dev, n_threads)
                    runtimes.append(runtime)
                    batch = inputs.tensors()[0].shape[0] if inputs.tensors() else 1
                    calls[f"{variant}/{stage}"] = runtime.runner(inputs, batch)
                if frames:
                    calls[f"{variant}/"] = _frame([calls[f"{variant}/{s}"] for s, _, _ in stages])
            timed = {key: [] for key in calls}
            for order in round_orders(list(calls), rounds):
                for key in order:
                    samples, _ = time_calls(calls[key], timer, policy or ROUND_POLICY)
                    timed[key].append(statistics.median(samples))
    finally:
        for runtime in runtimes:
            runtime.close()
    out: dict[str, dict[str, Any]] = {}
    for variant, stages in variants.items():
        alone = {s: statistics.median(timed[f"{variant}/{s}"]) for s, _, _ in stages}
        frame = timed.get(f"{variant}/")
        out[variant] = {
            "total_ms": statistics.median(frame) if frame else sum(alone.values()),
            "total_rounds_ms": frame,
            "stages": alone,
        }
    return out


def _frame(runs: list[Callable[[], Any]]) -> Callable[[], None]:
    """One frame of a pipeline: every stage once, one after another."""

    def frame() -> None:
        for run in runs:
            run()

    return frame
