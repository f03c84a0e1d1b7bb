"""One stage of a pipeline made ready to plan: its model loaded and traced, its data and
metric, its sensitivity and latency table (from the cache, a file made on the target, or
measured here), and its frontier of options (``planning.pipeline.stage_frontier``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunekit.api._pipeline_recovery import first_output
from prunekit.api._pipeline_spec import PipelineSpecError
from prunekit.errors import DataError
from prunekit.evaluate.tasks import TaskDrop, TaskMetric, check_labels, task_metric
from prunekit.inputs import parse_shape


@dataclass
class StageFacts:
    """What the run knows about one stage once it is ready (module docstring): ``held`` and
    ``items`` are the held-out inputs and labelled pairs the metrics are measured on."""

    loaded: Any
    model: torch.nn.Module
    example: Any
    sens: Any
    lut: Any
    sizes: dict[str, int]
    metric: TaskMetric | None
    data: Any
    held: torch.Tensor
    items: list[Any] | None
    held_from: str
    round_to: int = 1  # the plan's channel multiple; the uniform baseline rounds alike
    # model -> drop on fit items, as the sensitivity measured it (losses: measured)
    fit_drop: Any = None
    # the inputs the stage is timed on: the example at the pipeline's batch_size
    timed: Any = None

    @property
    def timing_example(self) -> Any:
        return self.example if self.timed is None else self.timed


def first_tensor(output: Any) -> torch.Tensor:
    return first_output(output, PipelineSpecError)


def stage_inputs(stage: dict[str, Any], loaded: Any, samples: int) -> dict[str, Any]:
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


def check_table_device(stage: str, path: Any, lut: Any, device: str, backend: str,
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


def stage_metric(stage: dict[str, Any], inputs: dict[str, Any]) -> TaskMetric | None:
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


def prepare_stage(stage: dict[str, Any], spec: dict[str, Any], cache: Path | None,
                  timings: dict[str, float], say: Any) -> tuple[Any, StageFacts]:  # fmt: skip
    """The stage's frontier and facts; adds the seconds spent to ``timings``."""
    import prunekit as pk
    from prunekit.graph import trace_channels
    from prunekit.measure.latency import TimingPolicy
    from prunekit.planning.lut import LatencyTable, TableMismatchError, profile_latency
    from prunekit.planning.pipeline import MACS_LADDER, stage_frontier

    name = stage["name"]
    device, threads = spec.get("device", "cpu"), spec.get("threads")
    backend, dtype = str(spec.get("backend", "eager")), str(spec.get("dtype", "float32"))
    batch = int(spec.get("batch_size", 1))
    shape = stage.get("input_shape")
    # input_shape: 1,3,128,128 or a list, [1, 3, 128, 128], whose text parses the same
    loaded = pk.load(stage["model"], input_shapes=[parse_shape(str(shape))] if shape else None,
                     model_kwargs=stage.get("model_kwargs"),
                     trust_code=bool(stage.get("trust_code", False)))  # fmt: skip
    model = loaded.model.eval()
    example = loaded.input_spec.make(1)
    try:
        graph = trace_channels(model, example)
    except Exception as exc:
        raise PipelineSpecError(f"stage {name}: its model cannot be traced for pruning "
                                f"({type(exc).__name__}: {exc})") from None  # fmt: skip
    # a table made on the target is checked before the sensitivity's minutes are spent
    cached = cache / f"{name}.lut.json" if cache else None
    table_file = stage.get("lut") or (cached if cached and cached.is_file() else None)
    lut = None
    if table_file:
        lut = LatencyTable.load(table_file)
        try:
            lut.check_model(model, example, graph, batch_size=batch)
        except TableMismatchError as exc:
            raise TableMismatchError(f"stage {name}: {exc}") from None
        check_table_device(name, table_file, lut, device, backend, dtype)
    inputs = stage_inputs(stage, loaded, int(spec.get("metric_samples", 64)))
    metric = stage_metric(stage, inputs)
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
    if lut is None:
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
    round_to = int((stage.get("plan") or {}).get("round_to", 1))
    # options about to be timed whole: channel cuts by MACs too, and no table-made ranking
    timed = spec.get("frontier", "predicted") == "measured"
    frontier = stage_frontier(name, model, example, sens, lut, graph=graph,
                              weight=float(stage.get("weight", 1.0)), log=say,
                              round_to=round_to, blocks=blocks,
                              macs_ladder=MACS_LADDER if timed else (),
                              keep_dominated=timed)  # fmt: skip
    timings["frontiers_s"] += time.perf_counter() - clock
    sizes = {key: g.size for key, g in sens.groups.items()}
    fit_drop: Any = drop
    if fit_drop is None and spec.get("losses", "predicted") == "measured":
        from prunekit.api.planning import sensitivity_batches
        from prunekit.planning.sensitivity import OutputDivergence

        # the sensitivity's default metric, on the same fit (or seeded random) inputs
        batches = sensitivity_batches(example, inputs["data"], config.samples)
        fit_drop = OutputDivergence(model, batches)
    return frontier, StageFacts(loaded=loaded, model=model, example=example, sens=sens, lut=lut,
                                sizes=sizes, metric=metric, round_to=round_to,
                                fit_drop=fit_drop, timed=loaded.input_spec.make(batch),
                                **inputs)  # fmt: skip
