"""``pk.run_pipeline``: several models planned under one frame budget, the pipeline file checked
key by key, pipeline.json holding the issue's keys for dense, planned and uniform, and a budget
no widths reach, or a latency table of another model, refused in one line."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from prunekit.api.pipeline import PipelineSpecError, agreement, parse_pipeline

QUICK = {"warmup_calls": 1, "warmup_s": 0.0, "min_repeats": 3, "min_time_s": 0.02,
         "max_repeats": 20, "max_time_s": 0.1}  # fmt: skip


def _stage(name: str, width: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "model": "prunekit.nn.mobile_cnn:MobileCNN",
            "model_kwargs": {"width": width}, "input_shape": "1,1,8,8",
            "sensitivity": {"samples": 8, "ratios": [0.25, 0.5, 0.75], "blocks": False},
            **extra}  # fmt: skip


def _spec(**top: Any) -> dict[str, Any]:
    return {"budget_fraction": 0.8, "threads": 1, "rounds": 3, "lut_timing": QUICK,
            "metric_samples": 16,
            "stages": [_stage("detect", 0.5, data="digits", weight=2.0), _stage("depth", 0.25)],
            **top}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"budget_msec": 10}, "unknown key 'budget_msec' \\(did you mean 'budget_ms'\\?\\)"),
        ({"budget_ms": 10}, "exactly one of budget_ms"),
        ({"budget_fraction": 1.5}, "at most 1"),
        ({"budget_fraction": -1}, "positive number"),
        (
            {"backend": "tflite"},
            "backend 'tflite' is not supported by prunekit pipeline; use "
            "one of eager, onnxruntime, compile, tensorrt",
        ),
        (
            {"backend": "tensorrt"},
            "backend tensorrt needs TensorRT, which is not installed"
            if importlib.util.find_spec("tensorrt") is None
            else "backend tensorrt runs on NVIDIA GPUs; set device: cuda",
        ),
        ({"dtype": "int8"}, "dtype 'int8' is not one of float32, float16, bfloat16"),
        ({"recover": {"lr": 0.1}}, "recover: give epochs:, seconds: or both"),
        ({"recover": {"epochs": 1, "steps": 3}}, "recover: unknown key 'steps'"),
        ({"recover": {"epochs": 0}}, "recover: epochs must be a positive integer, got 0"),
        ({"recover": {"epochs": True}}, "recover: epochs must be an integer, got bool True"),
        ({"recover": {"seconds": -5}}, "recover: seconds must be > 0, got -5"),
        ({"recover": {"epochs": 1, "lr": None}}, "recover: lr must be a number, got NoneType"),
        ({"recover": {"epochs": 1, "validation": 1}}, "recover: validation must lie in \\(0, 1\\)"),
        ({"recover": {"epochs": 1, "seed": 0.5}}, "recover: seed must be an integer"),
        ({"recover": [1]}, "recover: expected a mapping \\(epochs, seconds, lr"),
        ({"recover": {"epochs": 1}}, "stage 2: recover needs data:"),
        ({"stages": []}, "stages: must be a list"),
        ({"stages": [{"name": "a"}]}, "stage 1: model: is required"),
        ({"stages": [_stage("a", 0.5, metric="map")]}, "metric map needs labelled data"),
        ({"stages": [_stage("a", 0.5, metric="top5")]}, "metric 'top5' is not known"),
        ({"stages": [_stage("a", 0.5, wieght=1)]}, "did you mean 'weight'"),
        (
            {"stages": [_stage("a", 0.5, plan={"block": True})]},
            "plan: unknown key 'block' \\(did you mean 'blocks'",
        ),
        ({"stages": [_stage("a", 0.5), _stage("a", 0.25)]}, "unique"),
        ({"lut_timing": {"min_repeats": "x"}}, "lut_timing"),
        ({"replan": -1}, "replan must be an integer >= 0, got -1"),
        ({"rounds": 0}, "rounds must be an integer >= 1"),
        ({"threads": "2"}, "threads must be an integer >= 1, got '2'"),
        ({"losses": "guessed"}, "losses 'guessed' is not one of predicted, measured"),
        # a stage's name is a folder of --out and a file name in cache/: one path component
        *[
            ({"stages": [_stage(name, 0.5)]}, f"name '{re.escape(name)}' names a folder")
            for name in ("/tmp/abs", "../up", "a/b", ".", "pipeline.json", ".hidden")
        ],
        (
            {"stages": [_stage("a", 0.5, trust_code="false")]},
            "trust_code must be true or false, got 'false'",
        ),  # bool("false") is True
        ({"stages": [_stage("a", 0.5, plan={"blocks": "no"})]}, "blocks must be true or false"),
        ({"stages": [_stage("a", 0.5, plan={"round_to": 0})]}, "round_to must be an integer >= 1"),
        ({"stages": [_stage("a", 0.5, input_shape="1,a,8")]}, "stage 1: input_shape: cannot parse"),
        ({"stages": [_stage("a", 0.5, weight=float("nan"))]}, "weight must be a number >= 0"),
        ({"stages": [_stage("a", 0.5, weight=True)]}, "weight must be a number >= 0, got True"),
        (
            {"stages": [_stage("a", 0.5, sensitivity={"samples": -3})]},
            "stage 1: sensitivity: samples must be a positive integer",
        ),
        ({"budget_fraction": True}, "budget_fraction must be a positive number, got True"),
        ({"cache": 5}, "cache: must be the path of a directory"),
        ({"device": "tpu"}, "device 'tpu': use cpu or cuda"),
        ({"lut_timing": {"min_repeats": 0}}, "pipeline: lut_timing: "),
    ],
)
def test_the_pipeline_file_is_checked_key_by_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(PipelineSpecError, match=message):
        parse_pipeline({**_spec(), **change})


def test_an_input_shape_may_be_a_list() -> None:
    parse_pipeline({**_spec(), "stages": [_stage("a", 0.5, input_shape=[1, 1, 8, 8])]})


def test_a_cache_file_prunekit_did_not_write_is_refused_before_any_work(tmp_path: Path) -> None:
    """The options' and losses' cache files are replaced as a run goes: a user's own file
    where one goes is refused before the sensitivity runs, and is left as it was."""
    from prunekit.api.pipeline import run_pipeline
    from prunekit.errors import OutputPathError

    cache = tmp_path / "cache"
    cache.mkdir()
    mine = cache / "detect.losses.json"
    mine.write_text('{"my": "own data"}')
    with pytest.raises(OutputPathError, match=r"refusing to replace .*detect\.losses\.json: it "
                                              "is not a prunekit pipeline cache file"):  # fmt: skip
        run_pipeline({**_spec(), "cache": str(cache)}, tmp_path / "out")
    assert mine.read_text() == '{"my": "own data"}'
    assert sorted(p.name for p in cache.iterdir()) == ["detect.losses.json"]  # nothing measured


def test_agreement_metric() -> None:

    dense = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    other = torch.tensor([[0.2, 0.8], [0.1, 0.9], [0.4, 0.6], [0.7, 0.3]])
    assert agreement(dense, other) == 0.75  # per sample: classes
    depth = torch.full((2, 1, 4, 4), 2.0)
    assert agreement(depth, depth * 1.1) == pytest.approx(0.9)  # 1 - AbsRel


def _linear_tables(tmp_path: Path, stages: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """Latency tables of the two stages, profiled (so their fingerprints are the stages'),
    then given exact, linear times (10 ms dense, each group worth 5 ms / groups at zero
    width): the plan no longer depends on how busy the machine is."""
    import prunekit as pk
    from prunekit.measure.latency import TimingPolicy
    from prunekit.planning.lut import profile_latency

    paths = {}
    for stage in stages or _spec()["stages"]:
        shape = tuple(int(v) for v in stage["input_shape"].split(","))
        loaded = pk.load(stage["model"], input_shapes=[shape], model_kwargs=stage["model_kwargs"],
                         trust_code=bool(stage.get("trust_code")))  # fmt: skip
        lut = profile_latency(loaded.model, loaded.input_spec.make(1), policy=TimingPolicy(**QUICK),
                              blocks=False)  # fmt: skip
        data = lut.to_dict()
        data["base_ms"] = 10.0
        n = len(data["groups"])
        for g in data["groups"].values():
            g["ms"] = [10.0 - 5.0 * (1 - k / g["size"]) / n for k in g["kept"]]
        path = tmp_path / f"{stage['name']}.lut.json"
        path.write_text(json.dumps(data))
        paths[stage["name"]] = str(path)
    return paths


def _with_tables(tables: dict[str, str]) -> dict[str, Any]:
    spec = _spec()
    spec["stages"] = [{**stage, "lut": tables[stage["name"]]} for stage in spec["stages"]]
    return spec


@pytest.mark.slow
def test_the_pipelines_are_timed_at_the_batch_size(tmp_path: Path, monkeypatch: Any) -> None:
    """batch_size: the tables and every pipeline timed (dense, planned, uniform) run batches
    of that size; the metrics' inputs are separate."""
    from prunekit.api.pipeline import run_pipeline
    from prunekit.planning import pipeline as planning

    tables = _linear_tables(tmp_path)
    for path in tables.values():  # the linear tables, as if profiled at batch 4
        data = json.loads(Path(path).read_text())
        Path(path).write_text(json.dumps({**data, "batch_size": 4}))
    seen: list[int] = []
    real = planning.measure_pipelines

    def recording(variants: Any, **kwargs: Any) -> Any:
        seen.extend(ex.tensors()[0].shape[0] for vs in variants.values() for _, _, ex in vs)
        return real(variants, **kwargs)

    monkeypatch.setattr(planning, "measure_pipelines", recording)
    record = run_pipeline({**_with_tables(tables), "batch_size": 4, "replan": 0}, tmp_path / "o")
    assert record["batch_size"] == 4
    assert seen and set(seen) == {4}


@pytest.mark.slow
def test_a_two_stage_pipeline(tmp_path: Path) -> None:
    import prunekit as pk
    from prunekit.api.pipeline import run_pipeline

    # the tables come from the cache directory (as a second run finds them there)
    cache = tmp_path / "cache"
    cache.mkdir()
    for name, path in _linear_tables(tmp_path).items():
        Path(path).rename(cache / f"{name}.lut.json")
    record = run_pipeline({**_spec(), "cache": str(cache)}, tmp_path / "out")
    for name in ("detect", "depth"):
        assert json.loads((tmp_path / "out" / name / "lut.json").read_text())["base_ms"] == 10.0
        assert (cache / f"{name}.sensitivity.json").is_file()
    assert set(record["timings"]) == {"sensitivity_s", "tables_s", "frontiers_s"}
    assert json.loads((tmp_path / "out" / "pipeline.json").read_text()) == json.loads(
        json.dumps(record))  # fmt: skip
    for variant in ("dense", "planned", "uniform"):
        v = record[variant]
        assert {"total_ms_measured", "total_ms_predicted", "weighted_loss", "stages"} <= set(v)
        assert [s["name"] for s in v["stages"]] == ["detect", "depth"]
        for s in v["stages"]:
            assert {"name", "measured_ms", "predicted_ms", "metric", "metric_dense",
                    "macs_kept", "artifact"} <= set(s)  # fmt: skip
    assert record["dense"]["weighted_loss"] == 0.0
    assert record["budget_ms"] == pytest.approx(0.8 * record["dense_ms_at_planning"])
    # the plan fits the budget in prediction: in the tables' scale (converted to measured ms)
    # when no measurement corrected it, else in the corrected tables' (unless a busy machine
    # made the correction declare the budget out of reach)
    budget = record["budget_ms"] * 1.0001
    replanned = [step for step in record["replans"] if "planned_ms_corrected" in step]
    if not replanned:
        assert record["planned"]["total_ms_predicted"] <= budget
    elif "note" not in replanned[-1]:
        assert replanned[-1]["planned_ms_corrected"] <= budget
    if record["uniform_meets_budget_predicted"] and not any(
        "uniform_ratio" in step for step in record["replans"]
    ):
        assert record["uniform"]["total_ms_predicted"] <= budget
    # chosen in prediction, some pruning; a correction on a busy machine (where the dense
    # pipeline may measure under the budget set from its first, slower, measurement) may
    # take it to none
    corrected = any("uniform_ratio" in step for step in record["replans"])
    ratio = record["uniform_ratio"]
    assert ratio < 1 and (ratio >= 0 if corrected else ratio > 0)
    assert "of the eval part of digits" in record["planned"]["stages"][0]["metric_on"]
    for variant in ("planned", "uniform"):
        for s in record[variant]["stages"]:
            loaded = pk.load(str(tmp_path / "out" / s["artifact"]))
            macs = pk.count_macs(loaded.model, loaded.input_spec.make(1)).total
            dense = pk.load("prunekit.nn.mobile_cnn:MobileCNN", input_shapes=[(1, 1, 8, 8)],
                            model_kwargs={"width": 0.5 if s["name"] == "detect" else 0.25})  # fmt: skip
            assert macs / pk.count_macs(dense.model, dense.input_spec.make(1)).total == (
                pytest.approx(s["macs_kept"]))  # fmt: skip
    for name in ("detect", "depth"):
        assert (tmp_path / "out" / name / "lut.json").is_file()
        assert (tmp_path / "out" / name / "sensitivity.json").is_file()


@pytest.mark.slow
def test_measured_frontiers_plan_on_whole_model_times(tmp_path: Path) -> None:
    """frontier: measured: every frontier point and uniform grid ratio is timed as a whole
    pruned model and cached; a second run takes the times from the cache, and the plan and
    the uniform ratio are chosen on them (here times written into the cache: 2 ms plus 8 ms
    times the share of channels kept, which the tables' linear 10 ms do not predict)."""
    from prunekit.api.pipeline import run_pipeline
    from prunekit.planning.pipeline import UNIFORM_GRID, keep_key, uniform_keep

    cache = tmp_path / "cache"
    cache.mkdir()
    for name, path in _linear_tables(tmp_path).items():
        Path(path).rename(cache / f"{name}.lut.json")
    spec = {**_spec(), "cache": str(cache), "frontier": "measured", "replan": 0,
            "budget_fraction": 1.0}  # fmt: skip
    first = run_pipeline(spec, tmp_path / "first")
    assert first["frontier"] == "measured" and first["uniform_ratio"] == 0.0
    sizes, tables = {}, {}
    for name in ("detect", "depth"):
        counted = first["options_timed"][name]
        timed = json.loads((cache / f"{name}.options.json").read_text())
        assert counted["timed_now"] == counted["options"] == len(timed["ms"]) >= len(UNIFORM_GRID)
        assert all(ms > 0 for ms in timed["ms"].values())
        groups = json.loads((tmp_path / "first" / name / "lut.json").read_text())["groups"]
        sizes[name] = {k: g["size"] for k, g in groups.items()}
        total = sum(sizes[name].values())
        timed["dense_ms"] = 10.0
        timed["ms"] = {key: 2.0 + 8.0 * sum(v for _, v in json.loads(key)[0]) / total
                       for key in timed["ms"]}  # fmt: skip
        (cache / f"{name}.options.json").write_text(json.dumps(timed))
        tables[name] = timed["ms"]

    def uniform_ms(name: str, ratio: float) -> float:
        return tables[name].get(keep_key(uniform_keep(sizes[name], ratio)), 10.0)

    # defaults spelled out (the first file left them out) time the same pipeline: cached
    again = {**spec, "budget_fraction": 0.6, "device": "cpu", "dtype": "float32", "batch_size": 1}
    record = run_pipeline(again, tmp_path / "out")
    assert all(record["options_timed"][n]["timed_now"] == 0 for n in ("detect", "depth"))
    # the least grid ratio whose stages, as timed, fit 60% of the dense 20 ms
    fits = [r for r in UNIFORM_GRID if uniform_ms("detect", r) + uniform_ms("depth", r) <= 12.0]
    assert record["uniform_ratio"] == fits[0]
    scale = record["budget_ms"] / 0.6 / 20.0  # the dense frame as measured, per 20 ms timed
    for row in record["uniform"]["stages"]:
        expected = uniform_ms(row["name"], record["uniform_ratio"])
        assert row["predicted_ms"] == pytest.approx(expected * scale)
    for row in record["planned"]["stages"]:  # each stage's option at its time as timed
        assert min(abs(row["predicted_ms"] / scale - ms)
                   for ms in (10.0, *tables[row["name"]].values())) < 1e-9  # fmt: skip
    assert record["planned"]["total_ms_predicted"] <= 12.0 * scale * 1.0001


@pytest.mark.slow
def test_measured_losses_plan_on_each_option_s_drop_on_fit_items(tmp_path: Path) -> None:
    """losses: measured: every option is pruned whole and its drop measured with the
    sensitivity's metric on the same fit inputs; the plan's loss is that drop (recomputed here
    from the written artifacts), cached per stage, and a second run measures nothing."""
    import prunekit as pk
    from prunekit.api._pipeline_stages import stage_inputs
    from prunekit.api.pipeline import run_pipeline
    from prunekit.api.planning import sensitivity_batches
    from prunekit.planning.sensitivity import OutputDivergence

    cache = tmp_path / "cache"
    cache.mkdir()
    for name, path in _linear_tables(tmp_path).items():
        Path(path).rename(cache / f"{name}.lut.json")
    spec = {**_spec(), "cache": str(cache), "losses": "measured", "replan": 0}
    record = run_pipeline(spec, tmp_path / "out")
    assert record["losses"] == "measured" and "losses_s" in record["timings"]
    expected = 0.0
    for stage, row in zip(spec["stages"], record["planned"]["stages"], strict=True):
        counted = record["losses_measured"][stage["name"]]
        assert counted["measured_now"] == counted["options"] > 0
        assert (cache / f"{stage['name']}.losses.json").is_file()
        dense = pk.load(stage["model"], input_shapes=[(1, 1, 8, 8)],
                        model_kwargs=stage["model_kwargs"])  # fmt: skip
        example = dense.input_spec.make(1)
        data = stage_inputs(stage, dense, 4)["data"]
        drop = OutputDivergence(dense.model, sensitivity_batches(example, data, 8))
        planned = pk.load(str(tmp_path / "out" / row["artifact"])).model
        expected += stage.get("weight", 1.0) * drop(planned)
    assert record["planned"]["weighted_loss_predicted"] == pytest.approx(expected, rel=1e-4)
    again = run_pipeline(spec, tmp_path / "again")
    assert all(c["measured_now"] == 0 for c in again["losses_measured"].values())
    assert again["planned"]["weighted_loss_predicted"] == pytest.approx(
        record["planned"]["weighted_loss_predicted"])  # fmt: skip


def test_the_losses_cache_records_the_samples_the_losses_were_measured_on() -> None:
    """A stage that leaves ``samples`` out is recorded at the resolved default, so a later
    change of that default remakes the losses instead of reusing them."""
    from types import SimpleNamespace

    from prunekit.api._pipeline_losses import _settings
    from prunekit.api.planning import SensitivityConfig

    model = torch.nn.Linear(2, 2)
    facts = SimpleNamespace(model=model, sizes={"g": 2}, fit_drop=None,
                            example=SimpleNamespace(tensors=lambda: [torch.zeros(1, 2)]))  # fmt: skip
    stage = {"name": "s", "model": "m"}
    assert _settings(stage, facts)["samples"] == SensitivityConfig().samples
    spelled = {**stage, "sensitivity": {"samples": SensitivityConfig().samples}}
    assert _settings(spelled, facts) == _settings(stage, facts)
    assert _settings({**stage, "sensitivity": {"samples": 3}}, facts)["samples"] == 3


def _perception_stage(name: str, factory: str, metric: str, weight: float) -> dict[str, Any]:
    return {"name": name, "model": f"prunekit.nn.perception:{factory}",
            "model_kwargs": {"width": 16}, "input_shape": "1,3,48,48", "data": "scenes:8,6",
            "metric": metric, "weight": weight,
            "sensitivity": {"samples": 4, "ratios": [0.5], "blocks": False}}  # fmt: skip


@pytest.mark.slow
def test_task_metrics_are_scored_on_held_out_scenes(tmp_path: Path) -> None:
    """miou and absrel stages: sensitivity in the metric's units (its drop on fit scenes),
    the held-out scores equal an independent evaluation of the saved artifacts, and the
    weighted loss is the weighted sum of per-stage degradations (absrel: lower is better)."""
    import prunekit as pk
    from prunekit.api.pipeline import run_pipeline
    from prunekit.data.specs import load_data
    from prunekit.evaluate.tasks import task_metric

    stages = [_perception_stage("segment", "seg_net", "miou", 1.0),
              _perception_stage("depth", "depth_net", "absrel", 2.0)]  # fmt: skip
    tables = _linear_tables(tmp_path, stages)
    spec = {"budget_fraction": 0.85, "threads": 1, "rounds": 2, "metric_samples": 5,
            "stages": [{**s, "lut": tables[s["name"]]} for s in stages]}  # fmt: skip
    record = run_pipeline(spec, tmp_path / "out")
    items = [load_data("scenes:8,6", image_size=48).eval[i] for i in range(5)]
    for variant in ("dense", "planned", "uniform"):
        total = 0.0
        for row, stage in zip(record[variant]["stages"], stages, strict=True):
            metric = task_metric(stage["metric"])
            assert row["metric_name"] == stage["metric"]
            assert row["higher_is_better"] == (stage["metric"] == "miou")
            assert row["metric_loss"] == pytest.approx(metric.loss(row["metric_dense"],
                                                                   row["metric"]))  # fmt: skip
            total += stage["weight"] * row["metric_loss"]
            source = (str(tmp_path / "out" / row["artifact"]) if row["artifact"] else
                      stage["model"])  # fmt: skip
            loaded = pk.load(source, input_shapes=[(1, 3, 48, 48)],
                             model_kwargs=None if row["artifact"] else stage["model_kwargs"])  # fmt: skip
            assert metric.score(loaded.model.eval(), items, 4) == pytest.approx(row["metric"],
                                                                               rel=1e-5)  # fmt: skip
            assert "5 of the eval part of scenes:8,6" in row["metric_on"]
        assert record[variant]["weighted_loss"] == pytest.approx(total)
    assert record["dense"]["weighted_loss"] == 0.0
    sens = json.loads((tmp_path / "out" / "depth" / "sensitivity.json").read_text())
    assert "absrel_drop" in json.dumps(sens)


@pytest.mark.slow
def test_budgets_no_widths_reach_and_foreign_tables_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prunekit as pk
    from prunekit.api.pipeline import run_pipeline
    from prunekit.planning.lut import TableMismatchError
    from prunekit.planning.pipeline import PipelineError

    tables = _linear_tables(tmp_path)
    spec = _with_tables(tables)
    spec.pop("budget_fraction")
    spec["budget_ms"] = 0.001
    # in the ms the user gave, not the tables' scale
    with pytest.raises(PipelineError, match=r"the budget of 0\.001 ms cannot be met: "
                                            r".*detect .* ms, depth .* ms"):  # fmt: skip
        run_pipeline(spec, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    other = {**_spec(), "stages": [_stage("detect", 0.5, lut=tables["depth"])]}
    sensitivities: list[str] = []
    real = pk.sensitivity

    def counting(*args: Any, **kwargs: Any) -> Any:
        sensitivities.append("run")
        return real(*args, **kwargs)

    monkeypatch.setattr(pk, "sensitivity", counting)
    with pytest.raises(TableMismatchError, match=r"^stage detect: "):
        run_pipeline(other, tmp_path / "c")
    monkeypatch.undo()
    assert not sensitivities  # refused before the sensitivity ran
    gpu_table = json.loads(Path(tables["detect"]).read_text())
    gpu_table["device"].update(type="cuda", name="NVIDIA Jetson Orin")
    Path(tables["detect"]).write_text(json.dumps(gpu_table))
    with pytest.raises(PipelineSpecError, match=r"measured on cuda \(NVIDIA Jetson Orin\), but "
                                                "the pipeline runs on cpu"):  # fmt: skip
        run_pipeline(_with_tables(tables), tmp_path / "d")
    assert not (tmp_path / "d").exists()
    # a table timed in eager PyTorch does not predict ONNX Runtime's latency
    tables = _linear_tables(tmp_path)
    with pytest.raises(PipelineSpecError, match="measured with the eager backend, but the "
                                                "pipeline runs on onnxruntime"):  # fmt: skip
        run_pipeline({**_with_tables(tables), "backend": "onnxruntime"}, tmp_path / "e")
    assert not (tmp_path / "e").exists()
    # nor does an ONNX Runtime table timed with spinning threads (the default, and every
    # table from before the setting was recorded) predict a pipeline's sessions, which do not
    for spinning in (True, None):
        for name in ("detect", "depth"):
            made = json.loads(Path(tables[name]).read_text())
            made["device"].update(backend="onnxruntime", spinning=spinning)
            if spinning is None:
                del made["device"]["spinning"]
            Path(tables[name]).write_text(json.dumps(made))
        with pytest.raises(PipelineSpecError, match=r"timed with ONNX Runtime's threads spinning"
                                                    r".*profile the stage with --no-spinning"):  # fmt: skip
            run_pipeline({**_with_tables(tables), "backend": "onnxruntime"}, tmp_path / "e")
        assert not (tmp_path / "e").exists()
    tables = _linear_tables(tmp_path)
    # nor does a float32 table predict a bfloat16 pipeline
    with pytest.raises(PipelineSpecError, match="measured in float32, but the pipeline runs "
                                                "in bfloat16; profile the stage with --dtype"):  # fmt: skip
        run_pipeline({**_with_tables(tables), "dtype": "bfloat16"}, tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_pipelines_are_timed_on_the_chosen_backend() -> None:
    """On onnxruntime the frames run ONNX sessions: the PyTorch forward runs only to export
    and to check parity, however many calls are timed; in eager every timed call runs it."""
    from torch import nn

    from prunekit.inputs import TensorSpec
    from prunekit.measure.latency import TimingPolicy
    from prunekit.planning.pipeline import measure_pipelines

    pytest.importorskip("onnxruntime")

    class Counted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.conv(x)

    policy = TimingPolicy(warmup_calls=1, warmup_s=0.0, min_repeats=5, min_time_s=0.0,
                          max_repeats=5, max_time_s=1.0)  # fmt: skip
    example = TensorSpec(((1, 1, 8, 8),)).make(1)
    calls = {}
    for backend in ("eager", "onnxruntime"):
        a, b = Counted(), Counted()
        out = measure_pipelines({"v": [("a", a, example), ("b", b, example)]}, rounds=3,
                                threads=1, policy=policy, backend=backend)  # fmt: skip
        assert out["v"]["total_ms"] > 0 and set(out["v"]["stages"]) == {"a", "b"}
        calls[backend] = a.calls
    # 3 rounds x (stage alone + frame) x (1 warm-up + 5 timed) = 36 eager forwards
    assert calls["eager"] >= 36
    assert calls["onnxruntime"] <= 4  # export traces + the parity reference


@pytest.mark.slow
def test_recovery_distils_planned_and_uniform_stages_on_fit_images(tmp_path: Path) -> None:
    """recover: the pruned models of both pipelines imitate their dense models on the fit part
    (validation carved from it), the same for planned and uniform; a stage may opt out; the
    artifacts hold the recovered weights and the latencies measured before recovery stand."""

    import prunekit as pk
    from prunekit.api.pipeline import run_pipeline

    # a stage whose outputs depend on every channel (a random MobileCNN's logits are mostly
    # its classifier's bias, so pruning hardly moves them and there is nothing to recover)
    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n\n\ndef net():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),\n"
        "                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))\n"
    )
    spec = _spec()
    spec["stages"][0].update(model=f"{tmp_path / 'net.py'}:net", trust_code=True, model_kwargs={})
    tables = _linear_tables(tmp_path, spec["stages"])
    spec["stages"] = [{**stage, "lut": tables[stage["name"]]} for stage in spec["stages"]]
    spec["recover"] = {"epochs": 2, "lr": 2e-3, "samples": 300, "batch_size": 32}
    spec["stages"][1]["recover"] = False  # depth (random inputs, no data) opts out
    record = run_pipeline(spec, tmp_path / "out")
    # the settings as used, defaults filled in
    assert record["recover"] == {**spec["recover"], "seconds": None, "validation": 0.1, "seed": 0}
    assert record["uniform_ratio"] > 0  # the uniform detect stage is pruned: it recovers
    for variant in ("planned", "uniform"):
        detect, depth = record[variant]["stages"]
        assert depth["recovery"] is None
        r = detect["recovery"]
        if r["kept"] == "not pruned: nothing to recover":
            assert variant == "planned" and detect["macs_kept"] == 1.0
            continue
        assert r["kept"] == "recovered"
        assert r["train_samples"] + r["validation_samples"] == 300
        assert r["validation_samples"] == 30 and r["carved_from"] == "the fit part"
        assert r["epochs"] == 2 and r["stopped_by"] == "epochs" and r["steps"] == 2 * (270 // 32)
        assert r["validation_metric"] == "agreement"
        # what recovery is for: on the validation share the pruned stage's outputs come
        # closer to its dense model's (a random dense net predicts one class for every image,
        # so agreement itself starts at 1 and cannot show it)
        assert r["imitation_after"] < 0.8 * r["imitation_before"]
        assert r["validation_best"] >= r["validation_before"] - 1e-9
    assert record["dense"]["stages"][0]["recovery"] is None
    # the saved artifact is the recovered model: its held-out agreement is the one reported
    from prunekit.api.data import as_data

    stage = spec["stages"][0]
    dense = pk.load(stage["model"], input_shapes=[(1, 1, 8, 8)], trust_code=True)
    data = as_data("digits", example=dense.input_spec.make(1))
    held = torch.stack([data.eval[i][0] for i in range(spec["metric_samples"])])
    for variant in ("planned", "uniform"):
        saved = pk.load(str(tmp_path / "out" / "detect" / variant), trust_code=True).model.eval()
        with torch.no_grad():
            value = agreement(dense.model.eval()(held), saved(held))
        assert value == pytest.approx(record[variant]["stages"][0]["metric"], abs=1e-9)


def _cuda() -> bool:

    return bool(torch.cuda.is_available())


@pytest.mark.slow
@pytest.mark.skipif(not _cuda(), reason="needs CUDA: tables and pipelines timed on a GPU")
def test_a_pipeline_profiled_planned_and_timed_on_cuda(tmp_path: Path) -> None:
    """device: cuda, dtype: float16: the tables are profiled on the GPU in that precision, the
    pipelines timed there, and the artifacts and metrics come back to the CPU."""
    import prunekit as pk
    from prunekit.api.pipeline import run_pipeline

    record = run_pipeline({**_spec(), "device": "cuda", "dtype": "float16"}, tmp_path / "out")
    assert (record["device"], record["dtype"]) == ("cuda", "float16")
    for name in ("detect", "depth"):
        made = json.loads((tmp_path / "out" / name / "lut.json").read_text())["device"]
        assert (made["type"], made["dtype"]) == ("cuda", "float16")
    for variant in ("dense", "planned", "uniform"):
        assert all(s["measured_ms"] > 0 for s in record[variant]["stages"])
    detect = record["planned"]["stages"][0]
    loaded = pk.load(str(tmp_path / "out" / detect["artifact"]))
    assert next(loaded.model.parameters()).device.type == "cpu"
    assert 0 <= detect["metric"] <= 1


def test_a_pipeline_in_bfloat16_times_cast_copies() -> None:
    """dtype: the stages run in that precision while timed; the models (scored afterwards)
    keep their float32 weights."""
    from torch import nn

    from prunekit.inputs import TensorSpec
    from prunekit.measure.latency import TimingPolicy
    from prunekit.planning.pipeline import measure_pipelines

    seen: set[torch.dtype] = set()  # shared by the model and any copy of it

    class Seen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.add(x.dtype)
            return self.conv(x)

    policy = TimingPolicy(warmup_calls=1, warmup_s=0.0, min_repeats=3, min_time_s=0.0,
                          max_repeats=3, max_time_s=1.0)  # fmt: skip
    model = Seen()
    out = measure_pipelines({"v": [("a", model, TensorSpec(((1, 1, 8, 8),)).make(1))]},
                            rounds=2, threads=1, policy=policy, dtype="bfloat16")  # fmt: skip
    assert out["v"]["total_ms"] > 0
    assert seen == {torch.bfloat16}  # every timed call ran in bfloat16...
    assert model.conv.weight.dtype == torch.float32  # ...on a copy: the model is untouched


def test_the_command_refuses_bad_files_in_one_line(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("pipeline", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o"))
    assert result.code == 1 and "cannot read" in result.err
    bad = tmp_path / "p.yaml"
    bad.write_text("budget_ms: 10\nstages:\n  - {name: a, model: resnet18, wieght: 2}\n")
    result = cli("pipeline", str(bad), "--out", str(tmp_path / "o"))
    assert result.code == 1 and "did you mean 'weight'" in result.err
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    # a key given twice (YAML keeps the last without a word), text that is not UTF-8
    bad.write_text("budget_ms: 5\nbudget_ms: 0.001\nstages: []\n")
    result = cli("pipeline", str(bad), "--out", str(tmp_path / "o"))
    assert result.err.strip().endswith("is not valid YAML: the key 'budget_ms' is given twice in "
                                       "one mapping (line 2, column 1)"), result.err  # fmt: skip
    bad.write_bytes(b"\xff\xfe budget")
    result = cli("pipeline", str(bad), "--out", str(tmp_path / "o"))
    assert result.code == 1 and "is not UTF-8 text" in result.err
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
