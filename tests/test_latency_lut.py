"""Latency lookup tables: interpolation arithmetic, files, fingerprints, profiling, the CLI.

Timings are never compared with each other (the machine is shared and noisy): only structure,
counts, arithmetic on hand-made tables, round trips and errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import InputSpecError, PrunekitError
from prunekit.graph import trace_channels
from prunekit.measure.latency import TimingPolicy
from prunekit.planning.fingerprint import group_keys
from prunekit.planning.lut import (
    FORMAT,
    GroupLatency,
    LatencyTable,
    LatencyTableError,
    SkippedGroup,
    TableMismatchError,
    profile_latency,
)

TINY = TimingPolicy(
    warmup_calls=1, warmup_s=0, min_repeats=2, max_repeats=3, min_time_s=0, max_time_s=0.05
)


def hand_table() -> LatencyTable:
    return LatencyTable(
        fingerprint="0123456789abcdef",
        inputs=[[1, 3, 8, 8]],
        batch_size=1,
        device={"name": "test", "type": "cpu", "backend": "eager", "threads": 1},
        base_ms=10.0,
        groups={
            "a": GroupLatency("a", 8, [2, 4, 8], [6.0, 7.0, 10.0]),
            "b": GroupLatency("b", 4, [1, 2, 4], [9.0, 9.5, 10.0]),
        },
        skipped={"c": SkippedGroup(16, "removing its channels breaks the forward pass")},
        model="hand",
    )


def test_a_prediction_never_goes_below_the_floor() -> None:
    """Savings measured one group at a time can add up past the dense time (a small model,
    mostly fixed costs): the prediction stops at PREDICT_FLOOR of it, never below zero."""
    from prunekit.planning.lut import PREDICT_FLOOR

    table = LatencyTable("f", [[1]], 1, {}, 10.0, {
        "a": GroupLatency("a", 8, [2, 8], [3.0, 10.0]),
        "b": GroupLatency("b", 8, [2, 8], [3.0, 10.0]),
    })  # fmt: skip
    assert table.predict({"a": 2}) == 3.0  # one cut: as measured
    assert table.predict({"a": 2, "b": 2}) == PREDICT_FLOOR * 10.0  # 10 - 7 - 7 < 0


def net(width: int = 8) -> nn.Module:
    torch.manual_seed(width)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 12, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    )  # fmt: skip


X = torch.randn(1, 3, 8, 8)


@pytest.fixture(scope="module")
def profiled() -> tuple[nn.Module, dict[str, torch.Tensor], LatencyTable]:
    model = net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = profile_latency(
        model, X, trace_channels(model, X), batch_size=2, threads=1,
        fractions=(1.0, 0.3, 0.25, 0.2, 0.01), policy=TINY, model_name="net",
    )  # fmt: skip
    return model, before, table


# ------------------------------------------------------------------ arithmetic


def test_interpolation_and_additive_prediction() -> None:
    t = hand_table()
    a = t.group("a")
    assert a.at(8) == 10.0 and a.at(4) == 7.0
    assert a.at(6) == pytest.approx(8.5)  # halfway between 4 (7 ms) and 8 (10 ms)
    assert a.at(3) == pytest.approx(6.5)
    assert a.at(1) == 6.0  # flat below the smallest measured point
    assert t.predict({}) == 10.0
    assert t.predict({"a": 8, "b": 4}) == 10.0  # dense groups contribute nothing
    # 10 + (8.5 - 10) + (9.75 - 10)
    assert t.predict({"a": 6, "b": 3}) == pytest.approx(8.25)
    assert t.predict({"a": 2, "b": 1}) == pytest.approx(10 + (6 - 10) + (9 - 10))
    assert t.predict({"c": 16}) == 10.0  # a skipped group may be named dense


def test_prediction_errors() -> None:
    t = hand_table()
    with pytest.raises(LatencyTableError, match=r"no group 'zz'.*2 groups: a, b"):
        t.predict({"zz": 3})
    with pytest.raises(LatencyTableError, match=r"'c' was not profiled.*breaks the forward"):
        t.predict({"c": 8})
    for bad in (0, 9):
        with pytest.raises(LatencyTableError, match=f"has 8 channels; cannot keep {bad}"):
            t.predict({"a": bad})


def test_malformed_tables_are_refused() -> None:
    with pytest.raises(LatencyTableError, match="ascend"):
        GroupLatency("a", 8, [4, 2, 8], [1.0, 1.0, 1.0])
    with pytest.raises(LatencyTableError, match="end with the dense size 8"):
        GroupLatency("a", 8, [2, 4], [1.0, 1.0])
    with pytest.raises(LatencyTableError, match="equal length"):
        GroupLatency("a", 8, [2, 8], [1.0])
    with pytest.raises(LatencyTableError, match=r"dense point .* must be base_ms"):
        LatencyTable("f", [[1]], 1, {}, 5.0, {"a": GroupLatency("a", 8, [4, 8], [3.0, 4.0])})
    with pytest.raises(LatencyTableError, match="stored under 'b' is named 'a'"):
        LatencyTable("f", [[1]], 1, {}, 4.0, {"b": GroupLatency("a", 8, [4, 8], [3.0, 4.0])})


# ------------------------------------------------------------------ files


def test_save_load_round_trip(tmp_path: Path) -> None:
    t = hand_table()
    path = t.save(tmp_path / "lut.json")
    assert LatencyTable.load(path) == t
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["version"] == 1
    assert data["groups"]["a"] == {"name": "a", "size": 8, "kept": [2, 4, 8], "ms": [6, 7, 10]}
    assert data["skipped"]["c"]["size"] == 16
    assert [p.name for p in tmp_path.iterdir()] == ["lut.json"]  # no temporary file left


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "lut.json"
    path.write_text("precious")
    with pytest.raises(LatencyTableError, match=r"already exists.*--force"):
        hand_table().save(path)
    with pytest.raises(PrunekitError, match="refusing to replace"):
        hand_table().save(path, force=True)  # force replaces a latency table, nothing else
    assert path.read_text() == "precious"
    path.unlink()
    hand_table().save(path)
    hand_table().save(path, force=True)
    assert LatencyTable.load(path) == hand_table()
    with pytest.raises(LatencyTableError, match="is a directory"):
        hand_table().save(tmp_path, force=True)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(LatencyTableError, match=r"does not exist.*prunekit profile"):
        LatencyTable.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LatencyTableError, match="not valid JSON"):
        LatencyTable.load(bad)
    good = hand_table().to_dict()
    cases = [
        ([1, 2], "not a prunekit latency table"),
        ({**good, "format": "prunekit-sensitivity"}, "not a prunekit latency table"),
        ({**good, "version": 99}, "version 99; this prunekit reads version 1"),
        ({k: v for k, v in good.items() if k != "base_ms"}, "missing field 'base_ms'"),
        ({**good, "groups": {"a": {"name": "a", "size": 8, "kept": [8, 2], "ms": [1, 1]}}},
         "malformed.*ascend"),
        ({**good, "batch_size": "many"}, "malformed"),
    ]  # fmt: skip
    for data, message in cases:
        bad.write_text(json.dumps(data))
        with pytest.raises(LatencyTableError, match=message) as info:
            LatencyTable.load(bad)
        assert isinstance(info.value, PrunekitError) and str(bad) in str(info.value)


# ------------------------------------------------------------------ profiling


def test_profile_points_per_group_and_fraction(profiled) -> None:  # type: ignore[no-untyped-def]
    _, _, table = profiled
    # size 8: fractions 0.3, 0.25, 0.2, 0.01 keep 3, 2, 2 (repeat), 1; size 12: 4, 3, 3, 1
    assert {k: g.kept for k, g in table.groups.items()} == {"0": [1, 2, 3, 8], "3": [1, 3, 4, 12]}
    assert {k: g.size for k, g in table.groups.items()} == {"0": 8, "3": 12}
    for g in table.groups.values():
        assert len(g.ms) == len(g.kept) and all(ms > 0 for ms in g.ms)
        assert g.ms[-1] == table.base_ms  # the dense point is the base measurement
    assert table.batch_size == 2 and table.inputs == [[1, 3, 8, 8]] and table.model == "net"
    assert table.skipped == {}
    assert {"name", "type", "backend", "threads", "host", "torch"} <= set(table.device)
    assert table.device["backend"] == "eager" and table.device["threads"] == 1
    assert table.policy["max_time_s"] == TINY.max_time_s
    assert table.predict({"0": 8, "3": 12}) == table.base_ms


def test_profile_leaves_the_model_unchanged(profiled) -> None:  # type: ignore[no-untyped-def]
    model, before, _ = profiled
    after = model.state_dict()
    assert list(after) == list(before)
    for name, value in before.items():
        assert after[name].shape == value.shape and torch.equal(after[name], value), name
    assert model.training and model[0].out_channels == 8 and model[3].in_channels == 8
    model(X)  # still runs


def test_profiled_table_round_trips(profiled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, table = profiled
    assert LatencyTable.load(table.save(tmp_path / "lut.json")) == table


def test_fingerprint_matches_the_architecture_not_the_weights(profiled) -> None:  # type: ignore[no-untyped-def]
    _, _, table = profiled
    fresh = net()
    for p in fresh.parameters():  # re-initialised: other weights, same architecture
        nn.init.normal_(p)
    table.check_model(fresh, X)
    table.check_model(fresh, X, trace_channels(fresh, X), batch_size=2)
    with pytest.raises(TableMismatchError, match="group '0' has 6 channels here, 8 in the table"):
        table.check_model(net(width=6), X)
    with pytest.raises(TableMismatchError, match=r"input shapes 1x3x8x8.*called with 1x3x16x16"):
        table.check_model(fresh, torch.randn(1, 3, 16, 16))
    with pytest.raises(TableMismatchError, match="batch size 2, not 8"):
        table.check_model(fresh, X, batch_size=8)
    other_head = net()
    other_head[7] = nn.Linear(12, 7)  # no prunable group changes, a parameter shape does
    with pytest.raises(TableMismatchError, match="parameter or buffer shapes differ"):
        table.check_model(other_head, X)


class _TwoBranches(nn.Module):
    """Two prunable groups produced by one module: their names repeat."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 4))
        self.w2 = nn.Parameter(torch.randn(6, 4))
        self.h1 = nn.Linear(8, 2)
        self.h2 = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h1(F.relu(F.linear(x, self.w1))) + self.h2(F.relu(F.linear(x, self.w2)))


def test_repeated_group_names_get_unique_keys() -> None:
    model = nn.Sequential(_TwoBranches())
    x = torch.randn(1, 4)
    graph = trace_channels(model, x)
    assert [g.name for g in graph.prunable] == ["0", "0"]
    table = profile_latency(model, x, graph, fractions=(1, 0.5), policy=TINY, threads=1)
    assert list(table.groups) == list(group_keys(graph).values()) == ["0", "0#2"]
    assert [g.size for g in table.groups.values()] == [8, 6]


def test_profile_rejects_bad_arguments() -> None:
    model = net()
    with pytest.raises(InputSpecError, match=r"\(0, 1\]"):
        profile_latency(model, X, fractions=(1, 1.5), policy=TINY)
    with pytest.raises(InputSpecError, match="at least one"):
        profile_latency(model, X, fractions=(), policy=TINY)
    with pytest.raises(InputSpecError, match="batch size"):
        profile_latency(model, X, batch_size=0, policy=TINY)
    with pytest.raises(InputSpecError, match="cannot make a batch of 3"):
        profile_latency(model, torch.randn(2, 3, 8, 8), batch_size=3, policy=TINY)
    with pytest.raises(PrunekitError, match="unknown backend"):
        profile_latency(model, X, backend="tvm", policy=TINY)


# ------------------------------------------------------------------ CLI


def _profile_args(user_module: str, out: Path, *extra: str) -> list[str]:
    return [
        "profile", f"{user_module}:small_cnn", "--input-shape", "1,3,8,8", "--threads", "1",
        "--quick", "--min-time", "0", "--max-time", "0.05", "--out", str(out), *extra,
    ]  # fmt: skip


def test_cli_writes_the_table(cli, user_module, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "lut.json"
    result = cli(*_profile_args(user_module, out))
    assert result.code == 0, result.err
    table = LatencyTable.load(out)
    assert {k: g.kept for k, g in table.groups.items()} == {"0": [4, 8]}  # --quick: 1, 0.5
    assert table.device["threads"] == 1 and table.inputs == [[1, 3, 8, 8]]
    lines = result.out.splitlines()
    assert "eager" in lines[0] and "batch 1" in lines[0]
    assert lines[1].split() == ["group", "size", "ms", "at", "kept", "channels"]
    assert lines[3].split()[:3] == ["0", "8", "4:"]
    assert f"wrote {out}" in result.out
    assert "dense" in result.err  # progress goes to stderr


@pytest.mark.parametrize(("extra", "spins"), [((), True), (("--no-spinning",), False)])
def test_cli_records_whether_onnxruntime_threads_spin(  # type: ignore[no-untyped-def]
    cli, user_module, tmp_path: Path, extra: tuple[str, ...], spins: bool
) -> None:
    """A pipeline's sessions do not spin; --no-spinning makes the table it accepts."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "lut.json"
    result = cli(*_profile_args(user_module, out, "--backend", "onnxruntime", *extra))
    assert result.code == 0, result.err
    table = LatencyTable.load(out)
    assert table.device["backend"] == "onnxruntime" and table.device["spinning"] is spins


def test_cli_refuses_bad_input(cli, user_module, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "lut.json"
    bad_runs = [
        (("--fractions", "1,1.5"), "(0, 1]"),
        (("--fractions", "1,half"), "cannot parse --fractions"),
        (("--batch-size", "0"), "--batch-size"),
        (("--max-time", "0"), "--max-time"),
        (("--no-spinning",), "--no-spinning is an ONNX Runtime setting"),
    ]
    for extra, message in bad_runs:
        result = cli(*_profile_args(user_module, out, *extra))
        assert result.code == 1, extra
        assert result.err.count("\n") == 1 and message in result.err, result.err
        assert not out.exists()
    result = cli(*_profile_args(user_module, out)[:1], "no_such_model_xyz", "--out", str(out))
    assert result.code == 1 and result.err.count("\n") == 1 and not out.exists()
    out.write_text("precious")
    result = cli(*_profile_args(user_module, out))
    assert result.code == 1 and "already exists" in result.err and result.err.count("\n") == 1
    assert out.read_text() == "precious"
    result = cli(*_profile_args(user_module, out, "--force"))
    assert result.code == 1 and "refusing to replace" in result.err  # not a latency table
    assert out.read_text() == "precious"
    out.unlink()
    assert cli(*_profile_args(user_module, out)).code == 0
    result = cli(*_profile_args(user_module, out, "--force"))
    assert result.code == 0, result.err
    assert LatencyTable.load(out).groups["0"].size == 8


def test_unsafe_groups_are_skipped_and_keys_stay_stable() -> None:
    model = net()
    graph = trace_channels(model, X)
    graph.groups[next(i for i, g in enumerate(graph.groups) if g.name == "3")].unsafe = "hard-coded"
    table = profile_latency(model, X, graph, fractions=(1, 0.5), policy=TINY, threads=1)
    assert list(table.groups) == ["0"] and table.skipped["3"].size == 12
    assert "hard-coded" in table.skipped["3"].reason
    assert table.predict({"0": 4, "3": 12}) == table.group("0").at(4)
    table.check_model(model, X, graph)  # the checked graph
    table.check_model(model, X)  # a fresh one
    assert "3" not in [g.name for g in graph.prunable]  # the mark is kept


def test_a_group_that_fails_pruned_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import prunekit.planning.lut as lut

    real = lut.measure_latency
    fail_both = False

    def fussy(model: nn.Module, *args, **kwargs):  # type: ignore[no-untyped-def]
        if model[0].out_channels < 8 or (fail_both and model[3].out_channels < 12):
            raise RuntimeError("kernel not available")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(lut, "measure_latency", fussy)
    table = profile_latency(net(), X, fractions=(1, 0.5), policy=TINY, threads=1)
    assert list(table.groups) == ["3"]
    assert table.skipped["0"].size == 8 and "kernel not available" in table.skipped["0"].reason
    fail_both = True
    with pytest.raises(LatencyTableError, match=r"no group could be measured.*kernel not"):
        profile_latency(net(), X, fractions=(1, 0.5), policy=TINY, threads=1)


def test_module_latency_model_scales_each_module_by_its_work() -> None:
    """Hand-made module times: a conv scales with its MACs, a norm / activation with its
    output size, glue time stays; the prediction is relative to the measured total."""
    from prunekit.inputs import as_example_inputs
    from prunekit.planning.module_latency import ModuleLatencyModel, ModuleProfile

    model = net(8).eval()  # conv(3->8) bn relu conv(8->12) relu pool flatten linear(12->5)
    x = torch.randn(1, 3, 6, 6)
    times = {"0": 4.0, "1": 2.0, "2": 1.0, "3": 8.0, "4": 1.0, "5": 1.0, "6": 0.5, "7": 0.5}
    profile = ModuleProfile(times, hooked_total_ms=20.0, total_ms=10.0)  # 2 ms of glue
    latency = ModuleLatencyModel(model, as_example_inputs(x), profile)
    graph = trace_channels(model, x)
    first = next(g for g in graph.prunable if g.size == 8)
    half = np.arange(4)
    # conv0, bn1, relu2 and conv3 halve; the rest is unchanged
    expected = 2.0 + 4.0 / 2 + 2.0 / 2 + 1.0 / 2 + 8.0 / 2 + 1.0 + 1.0 + 0.5 + 0.5
    assert latency.predict([(first, half)]) == pytest.approx(10.0 * expected / 20.0)
    assert latency.predict([]) == pytest.approx(10.0)


def test_profile_modules_times_every_leaf() -> None:
    from prunekit.inputs import as_example_inputs
    from prunekit.planning.module_latency import profile_modules

    model = net(8).eval()
    profile = profile_modules(model, as_example_inputs(torch.randn(2, 3, 8, 8)), repeats=3)
    assert set(profile.module_ms) == {str(i) for i in range(8)}
    assert all(ms > 0 for ms in profile.module_ms.values())
    assert profile.hooked_total_ms >= sum(profile.module_ms.values()) * 0.99
    assert profile.total_ms > 0 and profile.outside_ms >= 0


def test_profile_by_modules_gives_a_table_per_group() -> None:
    model = net(8)
    x = torch.randn(1, 3, 8, 8)
    table = profile_latency(model, x, method="modules", fractions=(1.0, 0.5), policy=TINY)
    assert set(table.groups) == set(group_keys(trace_channels(model, x)).values())
    for g in table.groups.values():
        assert g.kept[-1] == g.size and g.ms[-1] == table.base_ms
        assert all(ms <= table.base_ms * 1.000001 for ms in g.ms)  # less work, never more
    with pytest.raises(PrunekitError, match="eager"):
        profile_latency(model, x, method="modules", backend="onnxruntime")
