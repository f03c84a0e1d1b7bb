"""``pk.run_pipeline``: several models pruned together under one frame budget.

A pipeline file names the stages (each a model, its input shape, optional data, a metric and
a weight) and a budget in milliseconds per frame (or a fraction of the dense pipeline's
measured time). Per stage: a sensitivity sweep (on the fit part of the stage's data, or
seeded random inputs) and a latency table (``lut:`` a file made on the target with
``prunekit profile``, fingerprint-checked, or measured here). Then one allocation across the
stages (``planning.pipeline``), the uniform baseline (one ratio for every stage) at the same
budget, both pruned, and all three pipelines -- dense, planned, uniform -- timed interleaved,
stage after stage, with each stage's metric against the dense stage on held-out inputs.

``frontier: measured`` times every option of every stage (each frontier point, and the
uniform baseline's ratios 0.05 to 0.9) as a whole pruned model before allocating, instead of
trusting the tables' sums (``api._pipeline_frontier``); the loss stays predicted.

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

import json
import time
from pathlib import Path
from typing import Any

import torch

from prunekit.api._pipeline_frontier import (
    check_cache_files,
    planned_model,
    uniform_model,
    uniform_table_keep,
)
from prunekit.api._pipeline_recovery import pruned, recover_stage
from prunekit.api._pipeline_spec import PipelineSpecError, parse_pipeline
from prunekit.api._pipeline_stages import StageFacts, first_tensor, prepare_stage
from prunekit.evaluate.tasks import agreement

__all__ = ["PipelineSpecError", "agreement", "parse_pipeline", "run_pipeline"]

VARIANTS = ("dense", "planned", "uniform")


def run_pipeline(spec: dict[str, Any] | str | Path, out: str | Path, *,
                 log: Any = None, force: bool = False) -> dict[str, Any]:  # fmt: skip
    """Plan, prune and measure the pipeline (module docstring); writes ``out/`` (per stage
    ``<stage>/planned`` and ``<stage>/uniform`` artifacts, ``<stage>/lut.json``,
    ``<stage>/sensitivity.json``) and returns ``pipeline.json``. ONNX Runtime sessions run
    without thread spinning, as several sessions in one process should (measure.backends.ort)."""
    from prunekit._files import read_yaml
    from prunekit._outputs import check_output_dir
    from prunekit.measure.backends.ort import ort_spinning

    say = log or (lambda _: None)
    if not isinstance(spec, dict):
        spec = parse_pipeline(read_yaml(spec, PipelineSpecError), str(spec))
    else:
        spec = parse_pipeline(spec)
    target = check_output_dir(out, "prunekit pipeline", force=force, log=say)
    with ort_spinning(False):
        run = _Run(spec, say)
        record = run.plan_and_measure()
    target.write(run.writer(record), say)
    return record


class _Run:
    """One pipeline run, phase by phase: prepare the stages, time the dense pipeline, allocate
    and pick the uniform ratio, measure and correct (``replan``), recover, score, write."""

    def __init__(self, spec: dict[str, Any], say: Any) -> None:
        self.spec, self.say = spec, say
        self.device, self.threads = spec.get("device", "cpu"), spec.get("threads")
        self.backend = str(spec.get("backend", "eager"))
        self.dtype = str(spec.get("dtype", "float32"))
        self.cache = Path(spec["cache"]).expanduser() if spec.get("cache") else None
        self.timings = {"sensitivity_s": 0.0, "tables_s": 0.0, "frontiers_s": 0.0}
        self.facts: dict[str, StageFacts] = {}
        self.models: dict[str, dict[str, torch.nn.Module]] = {}
        self.tables: dict[str, Any] = {}  # per stage: its latency table or its timed options
        self.ratios: Any = None  # the uniform ratios to choose from (None: any)
        self.base_ms: dict[tuple[str, int], float] = {}  # each option before any correction

    def measure(self, variants: dict[str, dict[str, torch.nn.Module]],
                rounds: int | None = None) -> dict[str, Any]:  # fmt: skip
        from prunekit.planning.pipeline import measure_pipelines

        timed = {v: [(n, m, self.facts[n].timing_example) for n, m in ms.items()]
                 for v, ms in variants.items()}  # fmt: skip
        return measure_pipelines(timed, rounds=rounds or int(self.spec.get("rounds", 5)),
                                 threads=self.threads, device=self.device, backend=self.backend,
                                 dtype=self.dtype)  # fmt: skip

    def plan_and_measure(self) -> dict[str, Any]:
        from prunekit.planning.pipeline import allocate, uniform_ratio

        if self.cache is not None:
            self.cache.mkdir(parents=True, exist_ok=True)
            check_cache_files(self.cache, [s["name"] for s in self.spec["stages"]])
        stages = []
        for stage in self.spec["stages"]:
            frontier, self.facts[stage["name"]] = prepare_stage(stage, self.spec, self.cache,
                                                                self.timings, self.say)  # fmt: skip
            stages.append(frontier)
        dense = {n: f.model for n, f in self.facts.items()}
        dense_total = self.measure({"dense": dense}, rounds=3)["dense"]["total_ms"]
        self.tables = {n: f.lut for n, f in self.facts.items()}
        losses = None
        if self.spec.get("losses", "predicted") == "measured":
            from prunekit.api._pipeline_losses import measure_losses

            clock = time.perf_counter()
            stages, losses = measure_losses(stages, self.facts, self.spec, self.cache, self.say)
            self.timings["losses_s"] = time.perf_counter() - clock
        options = None
        if self.spec.get("frontier", "predicted") == "measured":
            from prunekit.api._pipeline_frontier import measure_options
            from prunekit.planning.pipeline import UNIFORM_GRID

            clock = time.perf_counter()
            stages, self.tables, options = measure_options(stages, self.facts, self.spec,
                                                           self.cache, self.say)  # fmt: skip
            self.timings["options_s"] = time.perf_counter() - clock
            self.ratios = UNIFORM_GRID
        # what each option was predicted (or measured alone) at, before any correction
        self.base_ms = {(st.name, id(p.plan)): p.ms for st in stages for p in st.points}
        predicted_dense = sum(s.dense_ms for s in stages)
        budget_ms = float(self.spec.get("budget_ms") or self.spec["budget_fraction"] * dense_total)
        # the tables predict in their own scale; the budget is in measured ms
        budget_pred = budget_ms * predicted_dense / dense_total
        self.say(f"budget {budget_ms:.3f} ms per frame (dense pipeline {dense_total:.3f} ms "
                 f"measured, {predicted_dense:.3f} ms predicted)")  # fmt: skip
        clock = time.perf_counter()
        plan = allocate(stages, budget_pred, shown_scale=dense_total / predicted_dense)
        ratio, _, uniform_meets = uniform_ratio(
            {n: (f.sizes, self.tables[n], f.round_to) for n, f in self.facts.items()}, budget_pred,
            ratios=self.ratios)  # fmt: skip
        # planning proper: frontiers + allocation + uniform ratio (sensitivity, tables apart)
        planning_s = self.timings["frontiers_s"] + time.perf_counter() - clock
        if not uniform_meets:
            self.say(f"no uniform ratio meets the budget in prediction: the uniform baseline "
                     f"uses the fastest predicted, {ratio:.0%}")  # fmt: skip
        self.models = {"dense": dense, "planned": self.planned_models(plan),
                       "uniform": self.uniform_models(ratio)}  # fmt: skip
        measured = self.measure(self.models)
        plan, ratio, uniform_meets, measured, replans = self.replan(
            stages, plan, ratio, uniform_meets, measured, budget_ms, dense_total / predicted_dense
        )
        recovered = self.recover()
        record: dict[str, Any] = {
            "budget_ms": budget_ms, "budget_predicted_ms": budget_pred,
            "dense_ms_at_planning": dense_total, "device": self.device,
            "backend": self.backend, "dtype": self.dtype,
            "batch_size": int(self.spec.get("batch_size", 1)), "threads": self.threads,
            "frontier": self.spec.get("frontier", "predicted"), "options_timed": options,
            "losses": self.spec.get("losses", "predicted"), "losses_measured": losses,
            "planning_s": planning_s,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "uniform_ratio": ratio, "uniform_meets_budget_predicted": uniform_meets,
            "replans": replans,
            "recover": self.spec["recover"] and self.spec["recover"].to_dict(),
            "budget_met_measured": measured["planned"]["total_ms"] <= budget_ms * 1.03,
        }  # fmt: skip
        scale = dense_total / predicted_dense
        record.update(self.score(stages, plan, ratio, measured, recovered, scale))
        return record

    def planned_models(self, allocation: Any) -> dict[str, torch.nn.Module]:
        return {n: planned_model(f, allocation.choice[n].plan) for n, f in self.facts.items()}

    def uniform_models(self, ratio: float) -> dict[str, torch.nn.Module]:
        return {n: uniform_model(f.model, f.example, ratio, f.round_to)
                for n, f in self.facts.items()}  # fmt: skip

    def uniform_ms(self, name: str, ratio: float) -> float:
        """The uniform stage's latency in its table's scale (predicted, or measured alone)."""
        return float(self.tables[name].predict(uniform_table_keep(self.facts[name], ratio)))

    def option_ms(self, stage: Any, point: Any) -> float:
        """A chosen option's latency in its table's scale, before any correction."""
        return stage.dense_ms if point.plan is None else self.base_ms[(stage.name, id(point.plan))]

    def replan(self, stages: list[Any], plan: Any, ratio: float, uniform_meets: bool,
               measured: dict[str, Any], budget_ms: float, scale: float) -> tuple[Any, ...]:  # fmt: skip
        """Measured, then corrected: where a pipeline misses the budget as measured, rescale
        each stage's predicted savings by the share the measurement found and allocate again
        (``scale``: measured ms per table ms)."""
        from prunekit.planning.pipeline import (
            CorrectedTable,
            PipelineError,
            allocate,
            corrected_stage,
            savings_efficiency,
            uniform_ratio,
        )

        replans: list[dict[str, Any]] = []
        for attempt in range(int(self.spec.get("replan", 2))):
            redo = [v for v in ("planned", "uniform") if measured[v]["total_ms"] > budget_ms * 1.03]
            if not redo:
                break
            dense_stage = measured["dense"]["stages"]
            step: dict[str, Any] = {"attempt": attempt + 1, **{
                f"{v}_ms_measured": measured[v]["total_ms"] for v in ("planned", "uniform")}}  # fmt: skip
            if "planned" in redo:
                eff = {st.name: savings_efficiency(dense_stage[st.name],
                                                   measured["planned"]["stages"][st.name],
                                                   st.dense_ms * scale,
                                                   self.option_ms(st, plan.choice[st.name]) * scale)
                       for st in stages}  # fmt: skip
                corrected = [corrected_stage(st, dense_stage[st.name], eff[st.name], scale)
                             for st in stages]  # fmt: skip
                try:
                    plan = allocate(corrected, budget_ms)
                except PipelineError:
                    plan = allocate(corrected, sum(c.fastest.ms for c in corrected) * (1 + 1e-9))
                    step["note"] = (
                        "the budget cannot be met as measured: the fastest corrected plans"
                    )
                step["planned_efficiency"] = eff
                # the corrected tables' total, in measured ms (the raw tables' total, reported
                # per variant, may exceed the budget once the correction has moved the plan)
                step["planned_ms_corrected"] = plan.total_ms
                self.models["planned"] = self.planned_models(plan)
            if "uniform" in redo:
                eff = {n: savings_efficiency(dense_stage[n], measured["uniform"]["stages"][n],
                                             float(self.tables[n].predict({})) * scale,
                                             self.uniform_ms(n, ratio) * scale)
                       for n in self.facts}  # fmt: skip
                ratio, _, uniform_meets = uniform_ratio(
                    {n: (f.sizes, CorrectedTable(self.tables[n], dense_stage[n], eff[n], scale),
                         f.round_to)
                     for n, f in self.facts.items()}, budget_ms, ratios=self.ratios)  # fmt: skip
                step["uniform_efficiency"], step["uniform_ratio"] = eff, ratio
                self.models["uniform"] = self.uniform_models(ratio)
            over = ", ".join(f"{v} {measured[v]['total_ms']:.2f} ms" for v in redo)
            self.say(f"replan {attempt + 1}: over the budget of {budget_ms:.2f} ms as measured "
                     f"({over})")  # fmt: skip
            replans.append(step)
            measured = self.measure(self.models)
        return plan, ratio, uniform_meets, measured, replans

    def recover(self) -> dict[str, dict[str, Any]]:
        """Every pruned stage of both pipelines recovered where the file asks (recovery changes
        weights, not shapes: the measured latencies stand)."""
        recovered: dict[str, dict[str, Any]] = {"planned": {}, "uniform": {}}
        for stage in self.spec["stages"]:
            settings = stage["recover"]
            if settings is None:
                continue
            f = self.facts[stage["name"]]
            for variant in ("planned", "uniform"):
                model = self.models[variant][stage["name"]]
                if not pruned(model, f.model):
                    recovered[variant][stage["name"]] = {"kept": "not pruned: nothing to recover"}
                    continue
                self.say(f"{stage['name']}: recovering the {variant} model")
                recovered[variant][stage["name"]] = recover_stage(
                    model, f.model, f.data, f.metric, settings, self.device, log=self.say
                )
        return recovered

    def score(self, stages: list[Any], plan: Any, ratio: float, measured: dict[str, Any],
              recovered: dict[str, dict[str, Any]], scale: float) -> dict[str, Any]:  # fmt: skip
        """Per variant: each stage's metric on held-out inputs against the dense stage's, its
        predicted and measured ms and MACs kept, and the weighted losses."""
        from prunekit.measure.macs import count_macs
        from prunekit.planning.pipeline import predicted_loss, uniform_keep

        facts = self.facts
        with torch.no_grad():
            dense_out = {n: first_tensor(f.model.cpu()(f.held)) for n, f in facts.items()}

        def metric_of(name: str, model: torch.nn.Module) -> float:
            f = facts[name]
            model.cpu()  # timed on the device; the metrics and their labels are on the CPU
            with torch.no_grad():
                if f.metric is None:
                    return agreement(dense_out[name], first_tensor(model(f.held)))
                return float(f.metric.score(model, f.items or [], 16))  # labelled: items

        dense_score = {n: metric_of(n, f.model) for n, f in facts.items()}
        dense_macs = {n: count_macs(f.model, f.example).total for n, f in facts.items()}
        out: dict[str, Any] = {}
        for variant in VARIANTS:
            rows, loss, loss_pred = [], 0.0, 0.0
            for stage in stages:
                f, point = facts[stage.name], plan.choice[stage.name]
                model = self.models[variant][stage.name]
                value = (
                    dense_score[stage.name] if variant == "dense" else metric_of(stage.name, model)
                )
                metric = f.metric
                lost = (
                    (1.0 - value) if metric is None else metric.loss(dense_score[stage.name], value)
                )
                keep = ({} if variant == "dense" or (variant == "planned" and point.plan is None)
                        else point.plan.keep if variant == "planned"
                        else uniform_keep(f.sizes, ratio, f.round_to))  # fmt: skip
                predicted_ms = {"dense": stage.dense_ms, "planned": self.option_ms(stage, point),
                                "uniform": self.uniform_ms(stage.name, ratio)}[variant]  # fmt: skip
                loss += stage.weight * lost
                loss_pred += stage.weight * (point.loss if variant == "planned"
                                             else predicted_loss(f.sens, keep))  # fmt: skip
                rows.append({"name": stage.name,
                             "measured_ms": measured[variant]["stages"][stage.name],
                             "predicted_ms": predicted_ms * scale,
                             "metric": value, "metric_dense": dense_score[stage.name],
                             "metric_name": "agreement" if metric is None else metric.name,
                             "metric_loss": lost, "weight": stage.weight,
                             "higher_is_better": metric is None or metric.higher_is_better,
                             "metric_on": f.held_from,
                             "macs_kept": count_macs(model, f.example).total / dense_macs[stage.name],
                             "artifact": None if variant == "dense" else f"{stage.name}/{variant}",
                             "recovery": recovered.get(variant, {}).get(stage.name)})  # fmt: skip
            out[variant] = {"total_ms_measured": measured[variant]["total_ms"],
                            "total_ms_predicted": sum(r["predicted_ms"] for r in rows),
                            "weighted_loss": loss, "weighted_loss_predicted": loss_pred,
                            "stages": rows}  # fmt: skip
        return out

    def writer(self, record: dict[str, Any]) -> Any:
        import prunekit as pk

        def write(staging: Path) -> None:
            for name, f in self.facts.items():
                (staging / name).mkdir()
                f.lut.save(staging / name / "lut.json")
                f.sens.save(staging / name / "sensitivity.json")
                for variant in ("planned", "uniform"):
                    pk.save(self.models[variant][name], staging / name / variant, source=f.loaded)
            (staging / "pipeline.json").write_text(json.dumps(record, indent=1) + "\n")

        return write
