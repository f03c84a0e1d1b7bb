"""The pipeline file (``prunekit pipeline PIPELINE.yaml``): its keys, checked one by one."""

from __future__ import annotations

import difflib
import importlib.util
import math
from pathlib import Path
from typing import Any

from prunekit.api._pipeline_recovery import parse_recover
from prunekit.errors import InvalidValueError, PrunekitError

# where the stages can be timed; tensorrt without TensorRT is refused with its own message
PIPELINE_BACKENDS = ("eager", "onnxruntime", "compile", "tensorrt")
# the precision the stages are timed in (tables and pipelines); metrics stay in float32
PIPELINE_DTYPES = ("float32", "float16", "bfloat16")
TOP_KEYS = {"budget_ms", "budget_fraction", "device", "backend", "dtype", "recover", "batch_size", "threads",
            "rounds", "stages", "metric_samples", "lut_timing", "cache", "replan", "frontier",
            "losses"}  # fmt: skip
STAGE_KEYS = {"name", "model", "input_shape", "model_kwargs", "trust_code", "data", "metric",
              "weight", "lut", "sensitivity", "plan", "recover"}  # fmt: skip
METRICS = ("agreement", "map", "miou", "absrel")
# predicted: each option's latency from the stage's table; measured: each option timed whole
FRONTIERS = ("predicted", "measured")


class PipelineSpecError(InvalidValueError):
    """A pipeline file that cannot be used."""


def _unknown(keys: Any, known: set[str], where: str) -> None:
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PipelineSpecError(f"{where}: unknown key {key!r}{hint}; known: "
                                    f"{', '.join(sorted(known))}")  # fmt: skip


def _number(value: Any) -> bool:
    """A finite int or float (YAML's true is an int to Python, and is no budget)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_stage(stage: dict[str, Any], at: str) -> None:
    """A stage's own keys, before any work (its name becomes a folder in --out and a file
    name in cache/, so it must be one plain path component)."""
    from prunekit.api.planning import SensitivityConfig
    from prunekit.inputs import parse_shape

    name = stage["name"]
    if name in (".", "..", "pipeline.json") or any(c in name for c in "/\\:") \
            or name != name.strip() or name.startswith("."):  # fmt: skip
        raise PipelineSpecError(f"{at}: name {name!r} names a folder of --out and cache files: "
                                "use letters, digits, '-', '_' (no path)")  # fmt: skip
    if not isinstance(stage.get("trust_code", False), bool):
        raise PipelineSpecError(f"{at}: trust_code must be true or false, got "
                                f"{stage['trust_code']!r}")  # fmt: skip
    shape = stage.get("input_shape")
    if shape is not None:
        if not isinstance(shape, (str, list)):
            raise PipelineSpecError(f"{at}: input_shape: expected 1,3,224,224, got {shape!r}")
        try:
            parse_shape(str(shape))  # a list's text, [1, 3, 224, 224], parses the same
        except PrunekitError as exc:
            raise PipelineSpecError(f"{at}: input_shape: {exc}") from None
    for key in ("lut", "data"):
        if key in stage and (not isinstance(stage[key], str) or not stage[key]):
            raise PipelineSpecError(f"{at}: {key}: expected a path or spec, got {stage[key]!r}")
    if "model_kwargs" in stage and not isinstance(stage["model_kwargs"], dict):
        raise PipelineSpecError(f"{at}: model_kwargs: expected a mapping of keyword arguments")
    weight = stage.get("weight", 1.0)
    if not _number(weight) or weight < 0:
        raise PipelineSpecError(f"{at}: weight must be a number >= 0, got {weight!r}")
    plan = stage.get("plan") or {}
    if not isinstance(plan, dict):
        raise PipelineSpecError(f"{at}: plan: expected a mapping (round_to:, blocks:)")
    _unknown(plan, {"round_to", "blocks"}, f"{at}: plan")
    round_to = plan.get("round_to", 1)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise PipelineSpecError(f"{at}: plan: round_to must be an integer >= 1 (kept channels "
                                f"a multiple of it), got {round_to!r}")  # fmt: skip
    if "blocks" in plan and not isinstance(plan["blocks"], bool):
        raise PipelineSpecError(f"{at}: plan: blocks must be true or false, got "
                                f"{plan['blocks']!r}")  # fmt: skip
    sensitivity = stage.get("sensitivity")
    if sensitivity is not None:
        if not isinstance(sensitivity, dict):
            raise PipelineSpecError(f"{at}: sensitivity: expected a mapping (samples:, ...)")
        try:
            SensitivityConfig.from_dict(sensitivity)
        except (TypeError, ValueError, PrunekitError) as exc:
            raise PipelineSpecError(f"{at}: sensitivity: {exc}") from None


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
        if key in data and (not _number(data[key]) or data[key] <= 0):
            raise PipelineSpecError(f"{where}: {key} must be a positive number, got {data[key]!r}")
    if data.get("budget_fraction", 0.5) > 1:
        raise PipelineSpecError(f"{where}: budget_fraction must be at most 1")
    backend = data.get("backend", "eager")
    if backend == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
        raise PipelineSpecError(f"{where}: backend tensorrt needs TensorRT, which is not "
                                "installed here (NVIDIA GPUs: pip install tensorrt; Jetson: "
                                "it comes with JetPack)")  # fmt: skip
    if backend == "tensorrt" and data.get("device", "cpu") != "cuda":
        raise PipelineSpecError(f"{where}: backend tensorrt runs on NVIDIA GPUs; set device: cuda")
    device = data.get("device", "cpu")
    if not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda"):
        raise PipelineSpecError(f"{where}: device {device!r}: use cpu or cuda (cuda:N)")
    cache = data.get("cache")
    folder = Path(cache).expanduser() if isinstance(cache, str) and cache else None
    if cache is not None and (folder is None or (folder.exists() and not folder.is_dir())):
        raise PipelineSpecError(f"{where}: cache: must be the path of a directory (the "
                                f"tables, sensitivities and timings kept between runs), "
                                f"got {cache!r}")  # fmt: skip
    dtype = data.get("dtype", "float32")
    if dtype not in PIPELINE_DTYPES:
        raise PipelineSpecError(f"{where}: dtype {dtype!r} is not one of "
                                f"{', '.join(PIPELINE_DTYPES)}")  # fmt: skip
    if backend not in PIPELINE_BACKENDS:
        raise PipelineSpecError(f"{where}: backend {backend!r} is not supported by "
                                f"prunekit pipeline; use one of {', '.join(PIPELINE_BACKENDS)}")  # fmt: skip
    if data.get("frontier", "predicted") not in FRONTIERS:
        raise PipelineSpecError(f"{where}: frontier {data['frontier']!r} is not one of "
                                f"{', '.join(FRONTIERS)}")  # fmt: skip
    if data.get("losses", "predicted") not in FRONTIERS:
        raise PipelineSpecError(f"{where}: losses {data['losses']!r} is not one of "
                                f"{', '.join(FRONTIERS)}")  # fmt: skip
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
        except (TypeError, ValueError, PrunekitError) as exc:
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
        _check_stage(stage, at)
        metric = stage.get("metric", "agreement")
        if not isinstance(metric, str) or (metric not in METRICS and ":" not in metric):
            raise PipelineSpecError(f"{at}: metric {metric!r} is not known; use "
                                    f"{', '.join(METRICS)} or module:callable")  # fmt: skip
        if metric != "agreement" and not stage.get("data"):
            raise PipelineSpecError(f"{at}: metric {metric} needs labelled data (data: scenes, "
                                    "a segmentation folder, ...)")  # fmt: skip
        own = parse_recover(stage.get("recover", recover), at, PipelineSpecError)
        if own is not None and not stage.get("data"):
            raise PipelineSpecError(f"{at}: recover needs data: (the fit images the pruned "
                                    "model learns to imitate the dense one on)")  # fmt: skip
        checked.append({**stage, "recover": own})
        names.append(stage["name"])
    if len(set(names)) != len(names):
        raise PipelineSpecError(f"{where}: stage names must be unique, got {names}")
    # a copy with each stage's recover: resolved (its own, else the top level's) and checked
    return {**data, "recover": recover, "stages": checked}
