"""``pk.run_pipeline``: several models pruned together under one frame budget.

A pipeline file names the stages (each a model, its input shape, optional data, a metric and
a weight) and a budget in milliseconds per frame (or a fraction of the dense pipeline's
measured time). Per stage: a sensitivity sweep (on the fit part of the stage's data, or
seeded random inputs) and a latency table (``lut:`` a file made on the target with
``prunekit profile``, fingerprint-checked, or measured here). Then one allocation across the
stages (``planning.pipeline``), the uniform baseline (one ratio for every stage) at the same
budget, both pruned, and all three pipelines -- dense, planned, uniform -- timed interleaved,
stage after stage, with each stage's metric against the dense stage on held-out inputs.

``cache: DIR`` keeps each stage's sensitivity (resumable, refused when the model, metric
or sweep differ) and latency table (fingerprint-, batch- and device-checked) between runs, so
a second run only plans, prunes and measures; ``timings`` in pipeline.json say where the time
went (``planning_s``: the frontiers, the allocation and the uniform ratio).

Metrics (``prunekit.evaluate.tasks``): ``map`` (box mAP@0.5), ``miou``, ``absrel`` (lower is
better) on labelled data (``data: scenes`` has boxes, masks and depth), or ``module:callable``
(with ``trust_code: true``). With a task metric, the stage's sensitivity is that metric's drop
on fit items (never eval), so predicted and measured losses are in the metric's own units and
``weight`` converts between stages. ``agreement`` (default, no labels needed): the share of
positions whose class (argmax over the channel dimension) equals the dense model's; for
one-channel outputs (depth) ``1 - AbsRel`` against the dense output.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import math
from pathlib import Path
from typing import Any

import torch

from prunekit.api._pipeline_recovery import first_output, parse_recover, pruned, recover_stage
from prunekit.errors import DataError, InvalidValueError
from prunekit.evaluate.tasks import TaskDrop, TaskMetric, agreement, check_labels, task_metric

__all__ = ["PipelineSpecError", "agreement", "parse_pipeline", "run_pipeline"]

# where the stages can be timed; tensorrt without TensorRT is refused with its own message
PIPELINE_BACKENDS = ("eager", "onnxruntime", "compile", "tensorrt")
# the precision the stages are timed in (tables and pipelines); metrics stay in float32
PIPELINE_DTYPES = ("float32", "float16", "bfloat16")
TOP_KEYS = {"budget_ms", "budget_fraction", "device", "backend", "dtype", "recover", "batch_size", "threads",
            "rounds", "stages", "metric_samples", "lut_timing", "cache", "replan"}  # fmt: skip
STAGE_KEYS = {"name", "model", "input_shape", "model_kwargs", "trust_code", "data", "metric",
              "weight", "lut", "sensitivity", "plan", "recover"}  # fmt: skip
METRICS = ("agreement", "map", "miou", "absrel")


class PipelineSpecError(InvalidValueError):
    """A pipeline file that cannot be used."""


def _unknown(keys: Any, known: set[str], where: str) -> None:
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PipelineSpecError(f"{where}: unknown key {key!r}{hint}; known: "
                                    f"{', '.join(sorted(known))}")  # fmt: skip


def parse_pipeline(data: Any, where: str = "pipeline") -> dict[str, Any]:
    """Check a pipeline mapping; every mistake is one line naming the key. Returns a copy whose
    ``recover`` values (top level and per stage) are ``RecoverSettings`` or None."""
    if not isinstance(data, dict):
        raise PipelineSpecError(f"{where}: expected a mapping (budget_ms:, stages: ...)")
    _unknown(data, TOP_KEYS, where)
    if ("budget_ms" in data) == ("budget_fraction" in data):
        raise PipelineSpecError(f"{where}: give exactly one of budget_ms (ms per frame) or "
                                "budget_fraction (of the dense pipeline's measured time)")  # fmt: skip
    for key in ("budget_ms", "budget_fraction"):
        if key in data:
            value = data[key]
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise PipelineSpecError(f"{where}: {key} must be a positive number, got {value!r}")
    if data.get("budget_fraction", 0.5) > 1:
        raise PipelineSpecError(f"{where}: budget_fraction must be at most 1")
    backend = data.get("backend", "eager")
    if backend == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
        raise PipelineSpecError(f"{where}: backend tensorrt needs TensorRT, which is not "
                                "installed here (NVIDIA GPUs: pip install tensorrt; Jetson: "
                                "it comes with JetPack)")  # fmt: skip
    if backend == "tensorrt" and data.get("device", "cpu") != "cuda":
        raise PipelineSpecError(f"{where}: backend tensorrt runs on NVIDIA GPUs; set device: cuda")
    dtype = data.get("dtype", "float32")
    if dtype not in PIPELINE_DTYPES:
        raise PipelineSpecError(f"{where}: dtype {dtype!r} is not one of "
                                f"{', '.join(PIPELINE_DTYPES)}")  # fmt: skip
    if backend not in PIPELINE_BACKENDS:
        raise PipelineSpecError(f"{where}: backend {backend!r} is not supported by "
                                f"prunekit pipeline; use one of {', '.join(PIPELINE_BACKENDS)}")  # fmt: skip
    for key in ("replan", "rounds", "metric_samples", "batch_size", "threads"):
        value = data.get(key)
        low = 0 if key == "replan" else 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < low):  # fmt: skip
            raise PipelineSpecError(f"{where}: {key} must be an integer >= {low}, got {value!r}")
    timing = data.get("lut_timing")
    if timing is not None:
        from prunekit.measure.latency import TimingPolicy

        if not isinstance(timing, dict):
            raise PipelineSpecError(f"{where}: lut_timing: expected a mapping of TimingPolicy "
                                    "fields (min_repeats, min_time_s, max_time_s, ...)")  # fmt: skip
        try:
            TimingPolicy(**timing)
        except (TypeError, ValueError) as exc:
            raise PipelineSpecError(f"{where}: lut_timing: {exc}") from None
    recover = parse_recover(data.get("recover"), where, PipelineSpecError)
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages:
        raise PipelineSpecError(f"{where}: stages: must be a list of stages (name, model, ...)")
    names, checked = [], []
    for i, stage in enumerate(stages):
        at = f"{where}: stage {i + 1}"
        if not isinstance(stage, dict):
            raise PipelineSpecError(f"{at}: expected a mapping (name:, model:, ...)")
        _unknown(stage, STAGE_KEYS, at)
        for key in ("name", "model"):
            if not isinstance(stage.get(key), str) or not stage[key]:
                raise PipelineSpecError(f"{at}: {key}: is required")
        metric = stage.get("metric", "agreement")
        if not isinstance(metric, str) or (metric not in METRICS and ":" not in metric):
            raise PipelineSpecError(f"{at}: metric {metric!r} is not known; use "
                                    f"{', '.join(METRICS)} or module:callable")  # fmt: skip
        if metric != "agreement" and not stage.get("data"):
            raise PipelineSpecError(f"{at}: metric {metric} needs labelled data (data: scenes, "
                                    "a segmentation folder, ...)")  # fmt: skip
        plan = stage.get("plan") or {}
        if not isinstance(plan, dict):
            raise PipelineSpecError(f"{at}: plan: expected a mapping (round_to:, blocks:)")
        _unknown(plan, {"round_to", "blocks"}, f"{at}: plan")
        own = parse_recover(stage.get("recover", recover), at, PipelineSpecError)
        if own is not None and not stage.get("data"):
            raise PipelineSpecError(f"{at}: recover needs data: (the fit images the pruned "
                                    "model learns to imitate the dense one on)")  # fmt: skip
        checked.append({**stage, "recover": own})
        weight = stage.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or weight < 0:
            raise PipelineSpecError(f"{at}: weight must be a number >= 0, got {weight!r}")
        names.append(stage["name"])
    if len(set(names)) != len(names):
        raise PipelineSpecError(f"{where}: stage names must be unique, got {names}")
    # a copy with each stage's recover: resolved (its own, else the top level's) and checked
    return {**data, "recover": recover, "stages": checked}


def _first_tensor(output: Any) -> torch.Tensor:
    return first_output(output, PipelineSpecError)


def _inputs(stage: dict[str, Any], loaded: Any, samples: int) -> dict[str, Any]:
    """The stage's data: ``data`` (for sensitivity: fit part only), ``held`` (held-out
    inputs), ``items`` (held-out ``(input, target)`` pairs; None without data), ``held_from``."""
    example = loaded.input_spec.make(1)
    shape = tuple(example.tensors()[0].shape[1:])
    if stage.get("data"):
        from prunekit.api.data import as_data

        try:
            data = as_data(stage["data"], example=example)
        except DataError as exc:
            raise PipelineSpecError(f"stage {stage['name']}: {exc}") from None
        items = [data.eval[i] for i in range(min(samples, len(data.eval)))]
        held = torch.stack([x for x, _ in items])
        return {"data": data, "held": held, "items": items,
                "held_from": f"the first {len(items)} of the eval part of {stage['data']} "
                             f"({data.split.eval_from})"}  # fmt: skip
    generator = torch.Generator().manual_seed(1)  # not the sensitivity's seed 0
    return {"data": None, "held": torch.randn((samples, *shape), generator=generator),
            "items": None, "held_from": f"{samples} seeded random inputs (no data: given)"}  # fmt: skip


def _check_table_device(stage: str, path: Any, lut: Any, device: str, backend: str,
                        dtype: str = "float32") -> None:  # fmt: skip
    """A table measured on another kind of device, on another backend or in another precision
    predicts another runtime's latency."""
    measured = str(lut.device.get("type", "")) or "an unrecorded device"
    if measured != str(device).split(":")[0]:
        name = lut.device.get("name")
        raise PipelineSpecError(f"stage {stage}: the latency table {path} was measured on "
                                f"{measured}{f' ({name})' if name else ''}, but the pipeline "
                                f"runs on {device}; profile the stage on {device}")  # fmt: skip
    on = str(lut.device.get("backend") or "eager")
    if on != backend:
        raise PipelineSpecError(f"stage {stage}: the latency table {path} was measured with "
                                f"the {on} backend, but the pipeline runs on {backend}; "
                                f"profile the stage with --backend {backend}")  # fmt: skip
    # a pipeline's sessions do not spin (run_pipeline); a table timed with spinning threads
    # (ONNX Runtime's default; tables from before the record: spinning) times each stage alone
    if backend == "onnxruntime" and lut.device.get("spinning", True):
        raise PipelineSpecError(f"stage {stage}: the latency table {path} was timed with ONNX "
                                "Runtime's threads spinning, which a pipeline's sessions do not "
                                "do (each would take the cores from the next); profile the "
                                "stage with --no-spinning")  # fmt: skip
    made = str(lut.device.get("dtype") or "float32")
    if made != dtype:
        raise PipelineSpecError(f"stage {stage}: the latency table {path} was measured in "
                                f"{made}, but the pipeline runs in {dtype}; profile the stage "
                                f"with --dtype {dtype}")  # fmt: skip


def _task_metric(stage: dict[str, Any], inputs: dict[str, Any]) -> TaskMetric | None:
    """The stage's task metric, checked against its data's labels (None for agreement)."""
    name = stage.get("metric", "agreement")
    if name == "agreement":
        return None
    try:
        metric = task_metric(name, trust_code=bool(stage.get("trust_code", False)))
        check_labels(metric, inputs["items"][0][1], stage["data"])
    except DataError as exc:
        raise PipelineSpecError(f"stage {stage['name']}: {exc}") from None
    return metric


def run_pipeline(spec: dict[str, Any] | str | Path, out: str | Path, *,
                 log: Any = None, force: bool = False) -> dict[str, Any]:  # fmt: skip
    """Plan, prune and measure the pipeline (module docstring); writes ``out/`` (per stage
    ``<stage>/planned`` and ``<stage>/uniform`` artifacts, ``<stage>/lut.json``,
    ``<stage>/sensitivity.json``) and returns ``pipeline.json``. ONNX Runtime sessions run
    without thread spinning, as several sessions in one process should (measure.backends.ort)."""
    from prunekit.measure.backends.ort import ort_spinning

    with ort_spinning(False):
        return _run_pipeline(spec, out, log=log, force=force)


def _run_pipeline(spec: dict[str, Any] | str | Path, out: str | Path, *,
                  log: Any = None, force: bool = False) -> dict[str, Any]:  # fmt: skip
    import json
    import time

    import prunekit as pk
    from prunekit._files import read_yaml
    from prunekit._outputs import check_output_dir
    from prunekit.graph import trace_channels
    from prunekit.measure.latency import TimingPolicy
    from prunekit.measure.macs import count_macs
    from prunekit.planning.lut import LatencyTable, profile_latency
    from prunekit.planning.pipeline import (
        CorrectedTable,
        PipelineError,
        allocate,
        corrected_stage,
        measure_pipelines,
        predicted_loss,
        savings_efficiency,
        stage_frontier,
        uniform_ratio,
    )

    say = log or (lambda _: None)
    if not isinstance(spec, dict):
        spec = parse_pipeline(read_yaml(spec, PipelineSpecError), str(spec))
    else:
        spec = parse_pipeline(spec)
    target = check_output_dir(out, "prunekit pipeline", force=force, log=say)
    device, threads = spec.get("device", "cpu"), spec.get("threads")
    backend = str(spec.get("backend", "eager"))
    dtype = str(spec.get("dtype", "float32"))
    batch, samples = int(spec.get("batch_size", 1)), int(spec.get("metric_samples", 64))
    cache = Path(spec["cache"]) if spec.get("cache") else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    timings = {"sensitivity_s": 0.0, "tables_s": 0.0, "frontiers_s": 0.0}
    stages, facts = [], {}
    for stage in spec["stages"]:
        name = stage["name"]
        shape = stage.get("input_shape")
        loaded = pk.load(stage["model"], input_shapes=[tuple(int(s) for s in str(shape).split(","))]
                         if shape else None, model_kwargs=stage.get("model_kwargs"),
                         trust_code=bool(stage.get("trust_code", False)))  # fmt: skip
        model = loaded.model.eval()
        example = loaded.input_spec.make(1)
        try:
            graph = trace_channels(model, example)
        except Exception as exc:
            raise PipelineSpecError(f"stage {name}: its model cannot be traced for pruning "
                                    f"({type(exc).__name__}: {exc})") from None  # fmt: skip
        inputs = _inputs(stage, loaded, samples)
        metric = _task_metric(stage, inputs)
        config = pk.SensitivityConfig.from_dict(stage.get("sensitivity") or {})
        drop = None
        if metric is not None:  # its drop on fit items: sensitivity never sees the eval part
            fit = inputs["data"].fit
            drop = TaskDrop(metric, model, [fit[i] for i in range(min(config.samples, len(fit)))])
            say(f"{name}: {metric.name} {drop.dense:.4f} dense on {len(drop.items)} fit items")
        say(f"{name}: sensitivity")
        clock = time.perf_counter()
        sens = pk.sensitivity(model, example, data=inputs["data"], config=config,
                              model_name=stage["model"], metric=drop,
                              cache=cache / f"{name}.sensitivity.json" if cache else None)  # fmt: skip
        timings["sensitivity_s"] += time.perf_counter() - clock
        clock = time.perf_counter()
        # dropping whole residual blocks (where the sensitivity measured them) is what buys
        # latency on small inputs, where per-layer overheads outweigh the channels' MACs
        blocks = bool((stage.get("plan") or {}).get("blocks", config.blocks))
        cached = cache / f"{name}.lut.json" if cache else None
        table_file = stage.get("lut") or (cached if cached and cached.is_file() else None)
        if table_file:
            lut = LatencyTable.load(table_file)
            lut.check_model(model, example, graph, batch_size=batch)
            _check_table_device(name, table_file, lut, device, backend, dtype)
        else:
            say(f"{name}: latency table ({device}, batch {batch})")
            lut = profile_latency(model, example, graph, device=device, batch_size=batch,
                                  threads=threads, model_name=stage["model"], blocks=blocks,
                                  backend=backend, dtype=dtype,
                                  policy=TimingPolicy(**spec["lut_timing"])
                                  if spec.get("lut_timing") else None)  # fmt: skip
            if cached is not None:
                lut.save(cached)
        timings["tables_s"] += time.perf_counter() - clock
        clock = time.perf_counter()
        plan_options: dict[str, Any] = {
            "round_to": int((stage.get("plan") or {}).get("round_to", 1)),
            "blocks": blocks,
        }
        stages.append(stage_frontier(name, model, example, sens, lut, graph=graph,
                                     weight=float(stage.get("weight", 1.0)), log=say,
                                     **plan_options))  # fmt: skip
        timings["frontiers_s"] += time.perf_counter() - clock
        sizes = {key: g.size for key, g in sens.groups.items()}
        facts[name] = {"loaded": loaded, "model": model, "example": example, "sens": sens,
                       "lut": lut, "sizes": sizes, "metric": metric, **inputs}  # fmt: skip
    dense_variant = {"dense": [(n, f["model"], f["example"]) for n, f in facts.items()]}
    dense_ms = measure_pipelines(dense_variant, rounds=3, threads=threads, device=device,
                                 backend=backend, dtype=dtype)  # fmt: skip
    dense_total = dense_ms["dense"]["total_ms"]
    predicted_dense = sum(s.dense_ms for s in stages)
    budget_ms = float(spec.get("budget_ms") or spec["budget_fraction"] * dense_total)
    # the tables predict in their own scale; the budget is in measured ms
    budget_pred = budget_ms * predicted_dense / dense_total
    say(f"budget {budget_ms:.3f} ms per frame (dense pipeline {dense_total:.3f} ms measured, "
        f"{predicted_dense:.3f} ms predicted)")  # fmt: skip
    clock = time.perf_counter()
    plan = allocate(stages, budget_pred)
    ratio, _, uniform_meets = uniform_ratio(
        {n: (f["sizes"], f["lut"]) for n, f in facts.items()}, budget_pred)  # fmt: skip
    # planning proper: frontiers + allocation + uniform ratio (sensitivity and tables apart)
    planning_s = timings["frontiers_s"] + time.perf_counter() - clock
    if not uniform_meets:
        say(f"no uniform ratio meets the budget in prediction: the uniform baseline uses the "
            f"fastest predicted, {ratio:.0%}")  # fmt: skip
    scale = dense_total / predicted_dense  # measured ms per table ms

    def planned_models(allocation: Any) -> dict[str, Any]:
        out = {}
        for name, f in facts.items():
            out[name] = copy.deepcopy(f["model"])
            point = allocation.choice[name]
            if point.plan is not None:
                pk.prune_(out[name], f["example"], pk.PlanPruning(plan=point.plan))
        return out

    def uniform_models(fraction: float) -> dict[str, Any]:
        out = {}
        for name, f in facts.items():
            out[name] = copy.deepcopy(f["model"])
            if fraction > 0:
                pk.prune_(out[name], f["example"], pk.StructuredPruning(ratio=fraction))
        return out

    def uniform_table_ms(name: str, fraction: float) -> float:
        f = facts[name]
        kept = {k: max(1, round(n * (1 - fraction))) for k, n in f["sizes"].items()
                if k in f["lut"].groups}  # fmt: skip
        return float(f["lut"].predict(kept))

    def table_ms(stage: Any, point: Any) -> float:
        return (
            float(point.plan.achieved["latency_ms"]) if point.plan is not None else stage.dense_ms
        )

    def measure(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
        variants = {v: [(n, m, facts[n]["example"]) for n, m in ms.items()]
                    for v, ms in models.items()}  # fmt: skip
        return measure_pipelines(variants, rounds=int(spec.get("rounds", 5)), threads=threads,
                                 device=device, backend=backend, dtype=dtype)  # fmt: skip

    models: dict[str, dict[str, Any]] = {
        "dense": {n: f["model"] for n, f in facts.items()},
        "planned": planned_models(plan),
        "uniform": uniform_models(ratio),
    }
    measured = measure(models)
    # measured, then corrected: where a pipeline misses the budget as measured, rescale each
    # stage's predicted savings by the share the measurement found and allocate again
    replans: list[dict[str, Any]] = []
    for attempt in range(int(spec.get("replan", 2))):
        limit = budget_ms * 1.03
        redo = [v for v in ("planned", "uniform") if measured[v]["total_ms"] > limit]
        if not redo:
            break
        dense_stage = measured["dense"]["stages"]
        step: dict[str, Any] = {"attempt": attempt + 1, **{
            f"{v}_ms_measured": measured[v]["total_ms"] for v in ("planned", "uniform")}}  # fmt: skip
        if "planned" in redo:
            eff = {st.name: savings_efficiency(dense_stage[st.name],
                                               measured["planned"]["stages"][st.name],
                                               st.dense_ms * scale,
                                               table_ms(st, plan.choice[st.name]) * scale)
                   for st in stages}  # fmt: skip
            corrected = [corrected_stage(st, dense_stage[st.name], eff[st.name], scale)
                         for st in stages]  # fmt: skip
            try:
                plan = allocate(corrected, budget_ms)
            except PipelineError:
                plan = allocate(corrected, sum(c.fastest.ms for c in corrected) * (1 + 1e-9))
                step["note"] = "the budget cannot be met as measured: the fastest corrected plans"
            step["planned_efficiency"] = eff
            # the corrected tables' total, in measured ms (the raw tables' total, reported per
            # variant, may exceed the budget once the correction has moved the plan)
            step["planned_ms_corrected"] = plan.total_ms
            models["planned"] = planned_models(plan)
        if "uniform" in redo:
            eff = {n: savings_efficiency(dense_stage[n], measured["uniform"]["stages"][n],
                                         float(f["lut"].predict({})) * scale,
                                         uniform_table_ms(n, ratio) * scale)
                   for n, f in facts.items()}  # fmt: skip
            ratio, _, uniform_meets = uniform_ratio(
                {n: (f["sizes"], CorrectedTable(f["lut"], dense_stage[n], eff[n], scale))
                 for n, f in facts.items()}, budget_ms)  # fmt: skip
            step["uniform_efficiency"], step["uniform_ratio"] = eff, ratio
            models["uniform"] = uniform_models(ratio)
        over = ", ".join(f"{v} {measured[v]['total_ms']:.2f} ms" for v in redo)
        say(f"replan {attempt + 1}: over the budget of {budget_ms:.2f} ms as measured ({over})")
        replans.append(step)
        measured = measure(models)
    # recovery changes weights, not shapes: the measured latencies stand
    recovered: dict[str, dict[str, Any]] = {"planned": {}, "uniform": {}}
    for stage in spec["stages"]:
        settings = stage["recover"]
        if settings is None:
            continue
        f = facts[stage["name"]]
        for variant in ("planned", "uniform"):
            if not pruned(models[variant][stage["name"]], f["model"]):
                recovered[variant][stage["name"]] = {"kept": "not pruned: nothing to recover"}
                continue
            say(f"{stage['name']}: recovering the {variant} model")
            recovered[variant][stage["name"]] = recover_stage(
                models[variant][stage["name"]], f["model"], f["data"], f["metric"], settings,
                device, log=say)  # fmt: skip
    record: dict[str, Any] = {"budget_ms": budget_ms, "budget_predicted_ms": budget_pred,
                              "device": device, "backend": backend, "dtype": dtype,
                              "batch_size": batch,
                              "threads": threads, "planning_s": planning_s,
                              "timings": {k: round(v, 3) for k, v in timings.items()},
                              "uniform_ratio": ratio,
                              "uniform_meets_budget_predicted": uniform_meets,
                              "replans": replans,
                              "recover": spec["recover"] and spec["recover"].to_dict(),
                              "budget_met_measured": measured["planned"]["total_ms"]
                              <= budget_ms * 1.03}  # fmt: skip

    def score(name: str, model: torch.nn.Module) -> float:
        f = facts[name]
        model.cpu()  # timed on the device; the metrics and their labels are on the CPU
        with torch.no_grad():
            if f["metric"] is None:
                return agreement(dense_out[name], _first_tensor(model(f["held"])))
            return float(f["metric"].score(model, f["items"], 16))

    with torch.no_grad():
        dense_out = {n: _first_tensor(f["model"].cpu()(f["held"])) for n, f in facts.items()}
    dense_score = {n: score(n, f["model"]) for n, f in facts.items()}
    dense_macs = {n: count_macs(f["model"], f["example"]).total for n, f in facts.items()}
    for variant in ("dense", "planned", "uniform"):
        rows, loss, loss_pred = [], 0.0, 0.0
        for stage in stages:
            f = facts[stage.name]
            model = models[variant][stage.name]
            value = dense_score[stage.name] if variant == "dense" else score(stage.name, model)
            metric = f["metric"]
            metric_name = "agreement" if metric is None else metric.name
            lost = (1.0 - value) if metric is None else metric.loss(dense_score[stage.name], value)
            keep = ({} if variant == "dense" else
                    plan.choice[stage.name].plan.keep if variant == "planned"
                    and plan.choice[stage.name].plan is not None else
                    {} if variant == "planned" else
                    {k: max(1, round(n * (1 - ratio))) for k, n in f["sizes"].items()})  # fmt: skip
            predicted_ms = {"dense": stage.dense_ms,
                            "planned": table_ms(stage, plan.choice[stage.name]),
                            "uniform": uniform_table_ms(stage.name, ratio)}[variant]  # fmt: skip
            macs = count_macs(model, f["example"]).total / dense_macs[stage.name]
            loss += stage.weight * lost
            loss_pred += stage.weight * (plan.choice[stage.name].loss if variant == "planned"
                                         else predicted_loss(f["sens"], keep))  # fmt: skip
            rows.append({"name": stage.name, "measured_ms": measured[variant]["stages"][stage.name],
                         "predicted_ms": predicted_ms * dense_total / predicted_dense,
                         "metric": value, "metric_dense": dense_score[stage.name],
                         "metric_name": metric_name, "metric_loss": lost, "weight": stage.weight,
                         "higher_is_better": metric is None or metric.higher_is_better,
                         "metric_on": f["held_from"], "macs_kept": macs,
                         "artifact": None if variant == "dense" else f"{stage.name}/{variant}",
                         "recovery": recovered.get(variant, {}).get(stage.name)})  # fmt: skip
        record[variant] = {"total_ms_measured": measured[variant]["total_ms"],
                           "total_ms_predicted": sum(r["predicted_ms"] for r in rows),
                           "weighted_loss": loss, "weighted_loss_predicted": loss_pred,
                           "stages": rows}  # fmt: skip

    def writer(staging: Path) -> None:
        for name, f in facts.items():
            (staging / name).mkdir()
            f["lut"].save(staging / name / "lut.json")
            f["sens"].save(staging / name / "sensitivity.json")
            for variant in ("planned", "uniform"):
                pk.save(models[variant][name], staging / name / variant, source=f["loaded"])
        (staging / "pipeline.json").write_text(json.dumps(record, indent=1) + "\n")

    target.write(writer, say)
    return record
