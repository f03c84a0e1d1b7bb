"""One latency budget over several models: the allocation is the exact optimum over the
stages' trade-off points (checked against brute force), a budget no widths can reach is
refused with the figures, and a real two-model pipeline planned from measured sensitivity
and latency tables meets its budget in prediction."""

from __future__ import annotations

import itertools
import random
from typing import Any, ClassVar

import pytest

from prunekit.planning.pipeline import (
    MeasuredTable,
    PipelineError,
    Stage,
    StagePoint,
    allocate,
    keep_key,
    measured_stage,
    pareto,
    uniform_keep,
    uniform_ratio,
)


def _stage(name: str, points: list[tuple[float, float]], weight: float = 1.0) -> Stage:
    pts = pareto([StagePoint(ms, loss, 1.0) for ms, loss in points])
    return Stage(name, weight, max(ms for ms, _ in points), pts)


def _brute(stages: list[Stage], budget: float) -> float:
    best = math_inf = float("inf")
    for combo in itertools.product(*[s.points for s in stages]):
        if sum(p.ms for p in combo) <= budget:
            best = min(best, sum(s.weight * p.loss for s, p in zip(stages, combo, strict=True)))
    assert best < math_inf
    return best


def test_pareto_keeps_the_points_nothing_beats() -> None:
    points = [
        StagePoint(*p, 1.0) for p in [(10, 0), (8, 0.1), (8, 0.05), (6, 0.2), (7, 0.3), (5, 0.2)]
    ]
    assert [(p.ms, p.loss) for p in pareto(points)] == [(5, 0.2), (8, 0.05), (10, 0)]


def test_allocation_is_the_brute_force_optimum() -> None:
    rng = random.Random(0)
    for trial in range(200):
        stages = []
        for k in range(rng.randint(1, 4)):
            dense = rng.uniform(5, 40)
            points = [(dense, 0.0)]
            for _ in range(rng.randint(1, 8)):
                points.append((dense * rng.uniform(0.2, 1.0), rng.uniform(0, 1)))
            stages.append(_stage(f"s{k}", points, weight=rng.choice([0.5, 1.0, 3.0])))
        fastest = sum(s.fastest.ms for s in stages)
        dense = sum(s.dense_ms for s in stages)
        budget = rng.uniform(fastest, dense * 1.05)
        got = allocate(stages, budget)
        assert got.total_ms <= budget + 1e-9, trial
        assert got.weighted_loss == pytest.approx(_brute(stages, budget)), trial
        assert got.total_ms == pytest.approx(sum(p.ms for p in got.choice.values()))


def test_weights_move_the_budget_to_the_stage_that_matters() -> None:
    # two identical stages: 10 ms dense, 6 ms at loss 0.3 ; budget 16 ms: one must give way
    a = _stage("detect", [(10, 0.0), (6, 0.3)], weight=5.0)
    b = _stage("depth", [(10, 0.0), (6, 0.3)], weight=1.0)
    got = allocate([a, b], 16.0)
    assert got.choice["detect"].ms == 10 and got.choice["depth"].ms == 6
    assert got.weighted_loss == pytest.approx(0.3)


def test_a_budget_below_the_smallest_widths_says_by_how_much() -> None:
    a = _stage("detect", [(10, 0.0), (6, 0.3)])
    b = _stage("segment", [(8, 0.0), (5, 0.2)])
    with pytest.raises(
        PipelineError, match=r"still take 11 ms \(detect 6 ms, segment 5 ms\), 1 ms over"
    ):
        allocate([a, b], 10.0)
    # the tables' ms shown in the ms the user gave (here measured at half the tables' scale)
    with pytest.raises(PipelineError, match=r"the budget of 5 ms cannot be met: .* still take "
                                            r"5\.5 ms \(detect 3 ms, segment 2\.5 ms\), 0\.5 ms over"):  # fmt: skip
        allocate([a, b], 10.0, shown_scale=0.5)
    with pytest.raises(PipelineError, match="unique"):
        allocate([a, a], 100.0)
    with pytest.raises(PipelineError, match="positive"):
        allocate([a], -1)


class _Table:
    """A latency table whose groups cost 1 ms per channel over a 2 ms base."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.groups = sizes

    def predict(self, kept: dict[str, int]) -> float:
        return 2.0 + sum(kept.get(k, n) for k, n in self.groups.items())


def test_uniform_ratio_meets_the_budget_with_the_least_cut() -> None:
    stages = {"a": ({"g1": 10, "g2": 10}, _Table({"g1": 10, "g2": 10})),
              "b": ({"g": 20}, _Table({"g": 20}))}  # fmt: skip
    ratio, ms, meets = uniform_ratio(stages, 2 + 2 + 20)  # half the channels
    assert ratio == pytest.approx(0.5, abs=0.03) and meets
    assert sum(ms.values()) <= 24
    assert uniform_ratio(stages, 100)[0] == 0.0
    ratio, ms, meets = uniform_ratio(stages, 4.5)  # below any width: the fastest, said
    assert not meets and ratio > 0.85 and sum(ms.values()) > 4.5


def test_a_measured_table_knows_only_what_it_timed_and_the_grid_picks_from_it() -> None:
    """frontier: measured: the uniform ratio is the least grid ratio whose measured stages
    fit; a structure the table never timed is an error, not a guess."""
    sizes = {"a": {"g": 20}, "b": {"g1": 10, "g2": 30}}
    grid = (0.25, 0.5, 0.75)
    # measured: each stage saves little until half its channels go (a runtime's blocking)
    timed = {"a": {0.25: 9.5, 0.5: 6.0, 0.75: 5.0}, "b": {0.25: 9.8, 0.5: 7.0, 0.75: 6.5}}
    tables = {n: MeasuredTable(sizes[n], 10.0, {keep_key(uniform_keep(sizes[n], r)): ms
                                                for r, ms in timed[n].items()})
              for n in sizes}  # fmt: skip
    stages = {n: (sizes[n], tables[n]) for n in sizes}
    assert uniform_ratio(stages, 20.0, ratios=grid) == (0.0, {"a": 10.0, "b": 10.0}, True)
    assert uniform_ratio(stages, 19.3, ratios=grid) == (0.25, {"a": 9.5, "b": 9.8}, True)
    assert uniform_ratio(stages, 13.0, ratios=grid) == (0.5, {"a": 6.0, "b": 7.0}, True)
    assert uniform_ratio(stages, 11.0, ratios=grid) == (0.75, {"a": 5.0, "b": 6.5}, False)
    # as StructuredPruning keeps them: the floor of the ratio removed, rounded up to round_to
    assert uniform_keep(sizes["b"], 0.75) == {"g1": 3, "g2": 8}
    assert uniform_keep(sizes["b"], 0.75, round_to=8) == {"g1": 8, "g2": 8}
    assert uniform_keep({"g": 4}, 0.99, round_to=8) == {"g": 1}  # narrower than round_to
    with pytest.raises(PipelineError, match="was not timed"):
        tables["a"].predict({"g": 13})


def test_a_measured_stage_drops_the_points_its_measurement_beats() -> None:
    """The table ordered the options by its sums; timed whole, an option can be slower than
    one that loses less, and the frontier drops it."""
    stage = _stage("s", [(10.0, 0.0), (8.0, 0.1), (6.0, 0.3), (4.0, 0.6)])
    plans = [None, "p8", "p6", "p4"]
    stage.points = [StagePoint(p.ms, p.loss, p.fraction, plan)
                    for p, plan in zip(stage.points[::-1], plans, strict=True)][::-1]  # fmt: skip
    measured = measured_stage(stage, 9.0, {0: 5.0, 1: 7.5, 2: 7.0})  # p4, p6, p8 by index
    assert [(p.ms, p.loss, p.plan) for p in measured.points] == [
        (5.0, 0.6, "p4"),
        (7.0, 0.1, "p8"),
        (9.0, 0.0, None),
    ]  # p6: slower than p8, loses more
    assert measured.dense_ms == 9.0


def _linear(lut: Any) -> Any:
    """The profiled table (its fingerprint is the model's) with exact, linear times: 10 ms
    dense, each group worth 5 ms / groups at zero width, so a busy machine cannot flatten
    the curves the frontier is built from (seen in CI: one point left)."""
    from prunekit.planning.lut import LatencyTable

    data = lut.to_dict()
    data["base_ms"] = 10.0
    for g in data["groups"].values():
        g["ms"] = [10.0 - 5.0 * (1 - k / g["size"]) / len(data["groups"]) for k in g["kept"]]
    return LatencyTable.from_dict(data)


@pytest.mark.slow
def test_two_real_models_planned_against_one_budget() -> None:
    import torch

    import prunekit as pk
    from prunekit.graph import trace_channels
    from prunekit.measure.latency import TimingPolicy
    from prunekit.planning.lut import profile_latency
    from prunekit.planning.pipeline import predicted_loss, stage_frontier

    quick = TimingPolicy(warmup_calls=1, warmup_s=0.0, min_repeats=3, min_time_s=0.02,
                         max_repeats=20, max_time_s=0.1)  # fmt: skip
    stages = []
    models = {}
    for name, width in (("detect", 0.5), ("depth", 0.25)):
        loaded = pk.load("prunekit.nn.mobile_cnn:MobileCNN", input_shapes=[(1, 1, 8, 8)],
                         model_kwargs={"width": width})  # fmt: skip
        model, example = loaded.model.eval(), loaded.input_spec.make(1)
        graph = trace_channels(model, example)
        sens = pk.sensitivity(model, example, config=pk.SensitivityConfig(
            samples=8, ratios=(0.25, 0.5, 0.75), blocks=False))  # fmt: skip
        lut = _linear(profile_latency(model, example, graph, fractions=(1.0, 0.75, 0.5, 0.25),
                                      policy=quick, blocks=False))  # fmt: skip
        models[name] = (model, example, sens, lut, graph)
        stages.append(stage_frontier(name, model, example, sens, lut, graph=graph,
                                     ladder=(0.9, 0.8, 0.7, 0.6), blocks=False))  # fmt: skip
    dense = sum(s.dense_ms for s in stages)
    fastest = sum(s.fastest.ms for s in stages)
    assert fastest < dense and len(stages[0].points) >= 2
    # only an unreachable target ends the ladder; another planning error is reported
    from prunekit.planning.planner import PlanError

    model, example, sens, lut, graph = models["depth"]
    with pytest.raises(PlanError, match="round_to must be a positive integer"):
        stage_frontier("depth", model, example, sens, lut, graph=graph, ladder=(0.9,),
                       blocks=False, round_to=0)  # fmt: skip
    budget = (dense + fastest) / 2
    got = allocate(stages, budget)
    assert got.total_ms <= budget
    for name, point in got.choice.items():
        model, example, sens, lut, _ = models[name]
        if point.plan is None:
            continue
        assert lut.predict(point.plan.keep) == pytest.approx(point.ms, rel=1e-6)
        assert predicted_loss(sens, point.plan.keep) == pytest.approx(point.loss, rel=1e-6)
        pruned = __import__("copy").deepcopy(model)
        pk.prune_(pruned, example, pk.PlanPruning(plan=point.plan))
        with torch.no_grad():
            assert pruned(example.args[0]).shape == model(example.args[0]).shape


def test_measured_savings_rescale_a_stage() -> None:
    from prunekit.planning.pipeline import CorrectedTable, corrected_stage, savings_efficiency

    # predicted 10 -> 4 ms (6 saved, table scale 1), measured 10 -> 8.5: a quarter of it
    assert savings_efficiency(10.0, 8.5, 10.0, 4.0) == pytest.approx(0.25)
    assert savings_efficiency(10.0, 9.9, 10.0, 9.9) == 1.0  # nothing predicted: no evidence
    assert savings_efficiency(10.0, 12.0, 10.0, 4.0) == 0.05  # slower than dense: the floor
    stage = _stage("s", [(2.0, 0.3), (3.0, 0.1), (5.0, 0.0)])
    fixed = corrected_stage(stage, dense_measured=10.0, efficiency=0.5, scale=2.0)
    # saving (5 - ms) table ms = 2 (5 - ms) measured ms, half of it found: 10 - (5 - ms)
    assert [p.ms for p in fixed.points] == pytest.approx([7.0, 8.0, 10.0])
    assert [p.loss for p in fixed.points] == [0.3, 0.1, 0.0] and fixed.dense_ms == 10.0

    class Table:
        groups: ClassVar[dict[str, None]] = {"g": None}

        def predict(self, kept: Any, dropped: Any = ()) -> float:
            return 1.0 + kept.get("g", 1000) / 1000 * 4  # 5 ms dense, 1 ms at zero width

    table = CorrectedTable(Table(), dense_measured=6.0, efficiency=0.5, scale=1.0)
    assert table.predict({"g": 500}) == pytest.approx(6.0 - 0.5 * 2.0)
    # savings found larger than the table's: never below 5% of the measured dense time
    eager = CorrectedTable(Table(), dense_measured=6.0, efficiency=3.0, scale=1.0)
    assert eager.predict({"g": 0}) == pytest.approx(0.05 * 6.0)  # 6 - 3 * 4 < 0
    ratio, ms, meets = uniform_ratio({"s": ({"g": 1000}, table)}, 5.0)
    assert meets and ratio == pytest.approx(0.5, abs=0.01) and ms["s"] <= 5.0
