"""Sensitivity analysis, the budget planner and applying a plan: exact costs, resumption,
fingerprints, and an allocation that beats the uniform one."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.graph import trace_channels
from prunekit.measure.macs import count_macs
from prunekit.planning.apply import apply_plan
from prunekit.planning.fingerprint import PlanningFileError, group_keys
from prunekit.planning.lut import GroupLatency, LatencyTable
from prunekit.planning.planner import Plan, PlanError, Target, make_plan
from prunekit.planning.sensitivity import (
    GroupSensitivity,
    OutputDivergence,
    Sensitivity,
    SensitivityPoint,
    analyze_sensitivity,
)
from prunekit.pruning import prune

X = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
CALIBRATION = [torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(1))]


def net(widths: tuple[int, int, int] = (16, 24, 32), seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    a, b, c = widths
    model = nn.Sequential(
        nn.Conv2d(3, a, 3, padding=1), nn.BatchNorm2d(a), nn.ReLU(),
        nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
        nn.Conv2d(b, c, 3, padding=1, stride=2), nn.BatchNorm2d(c), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10),
    )  # fmt: skip
    with torch.no_grad():  # non-trivial batch statistics, so channels differ in importance
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.2, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def analysed() -> tuple[nn.Module, Sensitivity]:
    model = net()
    graph = trace_channels(model, X)
    sens = analyze_sensitivity(
        model, X, graph, OutputDivergence(model, CALIBRATION), ratios=[0.25, 0.5, 0.75]
    )
    return model, sens


def test_output_divergence_is_the_kl_of_the_softmaxes() -> None:
    model = net()
    metric = OutputDivergence(model, CALIBRATION)
    assert metric(model) == pytest.approx(0.0, abs=1e-7)
    other = net(seed=5)
    with torch.no_grad():
        p = F.softmax(model(CALIBRATION[0]), 1)
        q = F.softmax(other(CALIBRATION[0]), 1)
    expected = float((p * (p.log() - q.log())).sum(1).mean())
    assert metric(other) == pytest.approx(expected, rel=1e-5)


def test_sensitivity_points_are_exact_single_group_prunings(
    analysed: tuple[nn.Module, Sensitivity],
) -> None:
    model, sens = analysed
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = trace_channels(model, X)
    keys = group_keys(graph)
    assert list(sens.groups) == [keys[g.id] for g in graph.prunable]
    base = count_macs(model, X).total
    assert sens.base_macs == base
    metric = OutputDivergence(model, CALIBRATION)
    for group in graph.prunable:
        gs = sens.groups[keys[group.id]]
        assert [p.kept for p in gs.points] == [
            group.size - int(r * group.size) for r in (0.25, 0.5, 0.75)
        ]
        # each point equals pruning that group alone to that width
        point = gs.points[1]
        copy = net()
        copy.load_state_dict(model.state_dict())
        copy_graph = trace_channels(copy, X)
        prune(copy, X, graph=copy_graph, keep={group.id: point.kept})
        assert point.macs_fraction == pytest.approx(count_macs(copy, X).total / base)
        assert point.drop == pytest.approx(metric(copy), rel=1e-5)
        drops = [p.drop for p in gs.points]
        assert drops[-1] > 0
    # the model is left exactly as it was
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class _Interrupting:
    """A metric that counts its calls and raises KeyboardInterrupt at call ``stop``."""

    name = "counted"

    def __init__(self, inner: OutputDivergence, stop: int | None) -> None:
        self.inner, self.stop, self.calls = inner, stop, 0

    def __call__(self, model: nn.Module) -> float:
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return self.inner(model)


def test_an_interrupted_sensitivity_run_resumes_without_redoing_groups(
    tmp_path: Path, analysed: tuple[nn.Module, Sensitivity]
) -> None:
    model, full = analysed
    graph = trace_channels(model, X)
    cache = tmp_path / "sens.json"
    inner = OutputDivergence(model, CALIBRATION)
    first = _Interrupting(inner, stop=5)  # 3 points per group: dies inside the second group
    with pytest.raises(KeyboardInterrupt):
        analyze_sensitivity(model, X, graph, first, ratios=[0.25, 0.5, 0.75], cache=cache)
    saved = json.loads(cache.read_text())
    assert len(saved["groups"]) == 1
    second = _Interrupting(inner, stop=None)
    resumed = analyze_sensitivity(model, X, graph, second, ratios=[0.25, 0.5, 0.75], cache=cache)
    assert second.calls == 3 * (len(graph.prunable) - 1)
    for key, gs in full.groups.items():
        got = resumed.groups[key]
        assert [p.kept for p in got.points] == [p.kept for p in gs.points]
        np.testing.assert_allclose([p.drop for p in got.points], [p.drop for p in gs.points])
    assert Sensitivity.load(cache).groups.keys() == full.groups.keys()


def test_a_sensitivity_file_of_another_model_or_sweep_is_refused(
    tmp_path: Path, analysed: tuple[nn.Module, Sensitivity]
) -> None:
    model, sens = analysed
    path = tmp_path / "sens.json"
    sens.save(path)
    wider = net((16, 32, 32))
    graph = trace_channels(wider, X)
    with pytest.raises(PlanningFileError, match="different model or input shape"):
        analyze_sensitivity(wider, X, graph, lambda m: 0.0, cache=path)
    graph = trace_channels(model, X)
    metric = OutputDivergence(model, CALIBRATION)
    with pytest.raises(PlanningFileError, match="ratios"):
        analyze_sensitivity(model, X, graph, metric, ratios=[0.5], cache=path)
    with pytest.raises(PlanningFileError, match="different model"):
        make_plan(wider, X, trace_channels(wider, X), sens, Target("macs", 0.6))
    path.write_text("{not json")
    with pytest.raises(PlanningFileError, match="not valid JSON"):
        Sensitivity.load(path)


@pytest.mark.parametrize("target", ["macs=0.6", "params=0.5", "macs=0.8"])
def test_the_plan_meets_the_target_within_one_percent_when_applied(
    target: str, analysed: tuple[nn.Module, Sensitivity]
) -> None:
    model, sens = analysed
    plan = make_plan(model, X, trace_channels(model, X), sens, Target.parse(target))
    goal = Target.parse(target).value
    kind = "macs_fraction" if target.startswith("macs") else "params_fraction"
    assert goal - 0.01 <= plan.achieved[kind] <= goal
    pruned = net()  # the plan only depends on the architecture (and L1 on these weights)
    pruned.load_state_dict(model.state_dict())
    before_macs = count_macs(pruned, X).total
    before_params = sum(p.numel() for p in pruned.parameters())
    result = apply_plan(pruned, X, plan)
    assert result.removed_atoms == sum(plan.sizes[k] - plan.keep[k] for k in plan.keep)
    assert count_macs(pruned, X).total / before_macs == pytest.approx(
        plan.achieved["macs_fraction"]
    )
    params = sum(p.numel() for p in pruned.parameters())
    assert params / before_params == pytest.approx(plan.achieved["params_fraction"])


def _synthetic(sens: Sensitivity, weights: dict[str, float]) -> Sensitivity:
    """The same points with drops ``weight * removed_fraction ** 2`` per group."""
    groups = {}
    for key, gs in sens.groups.items():
        points = [
            SensitivityPoint(
                p.ratio,
                p.kept,
                weights[key] * (1 - p.kept / gs.size) ** 2,
                p.macs_fraction,
                p.params_fraction,
            )
            for p in gs.points
        ]
        groups[key] = GroupSensitivity(key, gs.size, points)
    return Sensitivity(sens.fingerprint, "net", "synthetic", sens.ratios, sens.base_macs,
                       sens.base_params, groups)  # fmt: skip


def test_a_sensitive_group_is_spared_and_the_plan_beats_uniform(
    analysed: tuple[nn.Module, Sensitivity],
) -> None:
    model, measured = analysed
    keys = list(measured.groups)
    weights = dict.fromkeys(keys, 1.0)
    weights[keys[0]] = 100.0  # pruning the first group is very costly
    sens = _synthetic(measured, weights)
    graph = trace_channels(model, X)
    plan = make_plan(model, X, graph, sens, Target("macs", 0.6))
    assert plan.keep[keys[0]] == plan.sizes[keys[0]]
    # uniform: every group cut by the same ratio, the largest that still keeps >= 60% MACs
    uniform_drop = None
    for ratio in np.arange(0.05, 0.76, 0.01):
        copy = net()
        copy.load_state_dict(model.state_dict())
        prune(copy, X, ratio=float(ratio))
        if count_macs(copy, X).total / measured.base_macs <= 0.6:
            kept = {k: gs.size - int(ratio * gs.size) for k, gs in sens.groups.items()}
            uniform_drop = sum(sens.groups[k].at(v) for k, v in kept.items())
            break
    assert uniform_drop is not None
    assert plan.predicted_drop < 0.5 * uniform_drop


def test_the_plan_is_close_to_the_exhaustive_optimum(
    analysed: tuple[nn.Module, Sensitivity],
) -> None:
    """Three groups with measured options only: compare with every combination."""
    model, measured = analysed
    sens = _synthetic(
        measured, {k: w for k, w in zip(measured.groups, [3.0, 1.0, 0.5, 2.0], strict=False)}
    )
    graph = trace_channels(model, X)
    plan = make_plan(model, X, graph, sens, Target("macs", 0.7))
    from prunekit.planning.planner import _Costs
    from prunekit.pruning.importance import atom_scores

    keys = group_keys(graph)
    groups = {keys[g.id]: g for g in graph.prunable}
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    costs = _Costs(model, X, groups, {k: atom_scores(g, tensors) for k, g in groups.items()}, None)
    choices = [[gs.size, *(p.kept for p in gs.points)] for gs in sens.groups.values()]
    best = min(
        sum(sens.groups[k].at(v) for k, v in zip(sens.groups, combo, strict=True))
        for combo in itertools.product(*choices)
        if costs.value(dict(zip(sens.groups, combo, strict=True)), "macs", exact=True) <= 0.7
    )
    # the planner may also use widths between the measured points, so it can do better
    assert plan.predicted_drop <= best * 1.05 + 1e-9


def test_protected_groups_stay_dense_and_counts_are_rounded(
    analysed: tuple[nn.Module, Sensitivity],
) -> None:
    model, sens = analysed
    graph = trace_channels(model, X)
    plan = make_plan(model, X, graph, sens, Target("macs", 0.7), protect=["3"], round_to=4)
    assert plan.keep["3"] == plan.sizes["3"]  # the group conv 3 produces
    assert all(v % 4 == 0 or v == plan.sizes[k] for k, v in plan.keep.items())
    assert any(v < plan.sizes[k] for k, v in plan.keep.items())


def test_an_unreachable_target_says_how_far_it_got(
    analysed: tuple[nn.Module, Sensitivity],
) -> None:
    model, sens = analysed
    with pytest.raises(PlanError, match=r"cannot be met: .* still gives 0\.\d+"):
        make_plan(model, X, trace_channels(model, X), sens, Target("macs", 0.02))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("macs", "expected KIND=VALUE"),
        ("flops=0.5", "unknown target 'flops'"),
        ("macs=1.5", "fraction to keep"),
        ("macs=abc", "is not a number"),
        ("latency_ms=-3", "positive"),
        ("bytes=lots", "bytes"),
    ],
)
def test_bad_targets_are_named(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        Target.parse(text)


def test_a_latency_target_uses_the_table(analysed: tuple[nn.Module, Sensitivity]) -> None:
    model, sens = analysed
    graph = trace_channels(model, X)
    keys = list(sens.groups)
    # only the second group's width changes latency in this (hand-made) table
    groups = {
        k: GroupLatency(k, sens.groups[k].size, [1, sens.groups[k].size], [10.0, 10.0])
        for k in keys
    }
    size = sens.groups[keys[1]].size
    groups[keys[1]] = GroupLatency(keys[1], size, [size // 4, size], [6.0, 10.0])
    from prunekit.planning.fingerprint import fingerprint, structure

    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    from prunekit.inputs import as_example_inputs

    example = as_example_inputs(X)
    lut = LatencyTable(fingerprint(graph, tensors, example), structure(graph, tensors, example)["inputs"],
                       1, {"name": "test"}, 10.0, groups)  # fmt: skip
    plan = make_plan(model, X, graph, sens, Target("latency_ms", 8.0), lut=lut)
    assert 7.92 <= plan.achieved["latency_ms"] <= 8.0
    assert plan.keep[keys[1]] < size
    assert all(plan.keep[k] == plan.sizes[k] for k in keys if k != keys[1])
    with pytest.raises(PlanError, match="needs a latency table"):
        make_plan(model, X, graph, sens, Target("latency_ms", 8.0))


def test_plan_round_trip_and_refusal_on_another_model(
    tmp_path: Path, analysed: tuple[nn.Module, Sensitivity]
) -> None:
    model, sens = analysed
    plan = make_plan(model, X, trace_channels(model, X), sens, Target("macs", 0.6))
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = Plan.load(path)
    assert loaded == plan
    other = net((16, 24, 40))
    with pytest.raises(PlanningFileError, match="different model"):
        apply_plan(other, X, loaded)
    data = json.loads(path.read_text())
    data["format"] = "something-else"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanningFileError, match="not a prunekit plan file"):
        Plan.load(path)


def test_latency_weight_prefers_the_cuts_that_save_time(
    analysed: tuple[nn.Module, Sensitivity],
) -> None:
    """At the same MACs target, charging latency moves the cut to the group whose channels
    cost time on the device (a hand-made table: only the last group's width matters)."""
    model, sens = analysed
    graph = trace_channels(model, X)
    keys = list(sens.groups)
    flat = {k: GroupLatency(k, sens.groups[k].size, [1, sens.groups[k].size], [10.0, 10.0])
            for k in keys}  # fmt: skip
    size = sens.groups[keys[-1]].size
    flat[keys[-1]] = GroupLatency(keys[-1], size, [1, size], [2.0, 10.0])
    from prunekit.inputs import as_example_inputs
    from prunekit.planning.fingerprint import fingerprint, structure

    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    example = as_example_inputs(X)
    lut = LatencyTable(fingerprint(graph, tensors, example), structure(graph, tensors, example)["inputs"],
                       1, {"name": "test"}, 10.0, flat)  # fmt: skip
    plain = make_plan(model, X, graph, sens, Target("macs", 0.7), lut=lut)
    aware = make_plan(model, X, graph, sens, Target("macs", 0.7), lut=lut, latency_weight=10.0)
    assert aware.achieved["latency_ms"] < plain.achieved["latency_ms"]
    assert aware.keep[keys[-1]] < plain.keep[keys[-1]]
    assert 0.69 <= aware.achieved["macs_fraction"] <= 0.7
    with pytest.raises(PlanError, match="latency table"):
        make_plan(model, X, graph, sens, Target("macs", 0.7), latency_weight=1.0)


def test_the_speedup_report_compares_with_the_ideal_and_says_when_it_lags() -> None:
    from prunekit.planning.verify import SpeedupReport, SpeedupRow

    report = SpeedupReport("eager", 2, dense_macs=300, pruned_macs=180)
    report.rows = [
        SpeedupRow(1, 10.0, 9.0, report.ideal),
        SpeedupRow(32, 100.0, 62.0, report.ideal),
    ]
    assert report.ideal == pytest.approx(300 / 180)
    assert report.rows[0].of_ideal == pytest.approx((10 / 9) / (300 / 180))
    findings = report.findings()
    assert len(findings) == 1 and findings[0].startswith("batch 1:")  # 1.11x of 1.67x
    assert "1.11x faster" in findings[0] and "1.67x fewer MACs" in findings[0]
    data = report.to_dict()
    assert data["rows"][1]["measured"] == pytest.approx(100 / 62)
    assert data["findings"] == findings


def test_verify_measures_both_models_with_the_same_settings() -> None:
    from prunekit.inputs import TensorSpec
    from prunekit.measure.latency import TimingPolicy
    from prunekit.planning.verify import verify_speedup

    dense = net()
    pruned = net()
    prune(pruned, X, ratio=0.5)
    tiny = TimingPolicy(warmup_calls=1, warmup_s=0, min_repeats=2, max_repeats=3, min_time_s=0,
                        max_time_s=0.05)  # fmt: skip
    report = verify_speedup(dense, pruned, TensorSpec(((1, 3, 12, 12),)), [1, 2], policy=tiny)
    assert [r.batch_size for r in report.rows] == [1, 2]
    assert report.dense_macs == count_macs(dense, X).total
    assert report.pruned_macs == count_macs(pruned, X).total
    assert all(r.ideal == pytest.approx(report.ideal) and r.dense_ms > 0 for r in report.rows)
    # the speedup is the median of the interleaved rounds' ratios, not a ratio of medians
    assert all(r.speedup is not None and r.measured == r.speedup for r in report.rows)


def test_an_objective_that_favours_pruning_still_lands_on_the_target(
    analysed: tuple[nn.Module, Sensitivity],
) -> None:
    """A latency charge so large that the cheapest plan prunes everything: the MACs target
    is a target, not a ceiling -- channels are given back until the plan is within 1%."""
    model, sens = analysed
    graph = trace_channels(model, X)
    keys = list(sens.groups)
    table = {k: GroupLatency(k, sens.groups[k].size, [1, sens.groups[k].size], [1.0, 10.0])
             for k in keys}  # fmt: skip
    from prunekit.inputs import as_example_inputs
    from prunekit.planning.fingerprint import fingerprint, structure

    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    example = as_example_inputs(X)
    lut = LatencyTable(fingerprint(graph, tensors, example), structure(graph, tensors, example)["inputs"],
                       1, {"name": "test"}, 10.0, table)  # fmt: skip
    plan = make_plan(model, X, graph, sens, Target("macs", 0.8), lut=lut, latency_weight=100.0)
    assert 0.79 <= plan.achieved["macs_fraction"] <= 0.8
