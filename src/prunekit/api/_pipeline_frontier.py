"""``frontier: measured``: every option of every stage timed whole before the allocation.

A latency table adds up savings measured one group at a time; on small inputs those savings
overlap (per-layer overheads, memory effects, a runtime's channel blocking), and a heavily
pruned stage saves far less than the sum promises (seen here: a third of the promise for
MobileNetV2 stages on ONNX Runtime). Timing each frontier point and each uniform ratio as a
whole pruned model, as NetAdapt does for its proposals, replaces the promise with the
measurement, so the allocation and the uniform baseline are chosen on what runs. The stage's
loss stays the sensitivity's prediction. Each option is timed alone (stage by stage, without
the frame), interleaved with the dense stage in rounds; the times are cached per stage in
``cache/`` (refused and remade when the model, backend, precision, threads or batch differ).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from prunekit._outputs import write_file_atomic
from prunekit.errors import OutputPathError
from prunekit.measure.latency import TimingPolicy

# per option, rounds x one short timing: the options differ by far more than this resolves
OPTION_POLICY = TimingPolicy(warmup_calls=2, warmup_s=0.0, min_repeats=3, min_time_s=0.2,
                             max_repeats=200, max_time_s=0.6, target_rel_ci=0.05)  # fmt: skip
OPTION_ROUNDS = 3
CHUNK = 12  # options made (and held as runtimes) at once, beside the dense stage


def planned_model(facts: Any, plan: Any) -> nn.Module:
    """The stage's model pruned by ``plan`` (a copy, also for None: kept dense)."""
    import prunekit as pk

    model = copy.deepcopy(facts.model)
    if plan is not None:
        pk.prune_(model, facts.example, pk.PlanPruning(plan=plan))
    return model


def uniform_model(model: nn.Module, example: Any, ratio: float, round_to: int = 1) -> nn.Module:
    """A copy of ``model`` with ``ratio`` of every group's channels removed, kept counts
    rounded up to ``round_to`` as the stage's plans' are."""
    import prunekit as pk

    model = copy.deepcopy(model)
    if ratio > 0:
        pk.prune_(model, example, pk.StructuredPruning(ratio=ratio, round_to=round_to))
    return model


def uniform_table_keep(facts: Any, ratio: float) -> dict[str, int]:
    """What ``uniform_ratio`` asks a table for at ``ratio``: the kept channels of the groups
    the table knows."""
    from prunekit.planning.pipeline import uniform_keep

    return uniform_keep(facts.sizes, ratio, facts.round_to, groups=facts.lut.groups)


def measure_options(
    frontiers: list[Any], facts: dict[str, Any], spec: dict[str, Any], cache: Path | None,
    say: Callable[[str], object],
) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:  # fmt: skip
    """The frontiers with every point at its measured ms, per stage a ``MeasuredTable`` of the
    uniform grid's ratios, and what was done (``options``: per stage how many were timed and
    how many came from the cache)."""
    from prunekit.planning.pipeline import (
        UNIFORM_GRID,
        MeasuredTable,
        keep_key,
        measure_pipelines,
        measured_stage,
    )

    measured, tables, done = [], {}, {}
    for stage in frontiers:
        f = facts[stage.name]
        makers: dict[str, Callable[[], nn.Module]] = {}
        for p in stage.points:
            if p.plan is not None:
                key = keep_key(p.plan.keep, p.plan.drop_blocks)
                makers[key] = functools.partial(planned_model, f, p.plan)
        for ratio in UNIFORM_GRID:
            makers[keep_key(uniform_table_keep(f, ratio))] = functools.partial(
                uniform_model, f.model, f.example, ratio, f.round_to
            )
        settings = _settings(spec, stage.name, f)
        path = cache / CACHE_FILES["options"].format(stage.name) if cache else None
        known = load_cached(path, settings, "ms", lambda stored: {**stored, **_where(stored)})
        todo = [k for k in makers if k not in known["ms"]]
        if todo:
            say(
                f"{stage.name}: timing {len(todo)} options whole ({len(makers) - len(todo)} cached)"
            )
        for start in range(0, len(todo), CHUNK):
            keys = todo[start : start + CHUNK]
            variants = {"dense": [(stage.name, f.model, f.timing_example)]}
            variants.update({f"o{i}": [(stage.name, makers[k](), f.timing_example)]
                             for i, k in enumerate(keys)})  # fmt: skip
            timed = measure_pipelines(variants, rounds=OPTION_ROUNDS, threads=spec.get("threads"),
                                      device=spec.get("device", "cpu"), policy=OPTION_POLICY,
                                      backend=str(spec.get("backend", "eager")),
                                      dtype=str(spec.get("dtype", "float32")), frames=False)  # fmt: skip
            dense = timed["dense"]["total_ms"]
            known.setdefault("dense_ms", dense)
            # chunks timed minutes apart: each option relative to its own chunk's dense stage
            for i, k in enumerate(keys):
                known["ms"][k] = timed[f"o{i}"]["total_ms"] * known["dense_ms"] / dense
            save_cached(path, known)
        dense_ms = float(known["dense_ms"]) if known["ms"] else float(stage.dense_ms)
        point_ms = {i: known["ms"][keep_key(p.plan.keep, p.plan.drop_blocks)]
                    for i, p in enumerate(stage.points) if p.plan is not None}  # fmt: skip
        measured.append(measured_stage(stage, dense_ms, point_ms))
        tables[stage.name] = MeasuredTable({k: n for k, n in f.sizes.items() if k in f.lut.groups},
                                          dense_ms, known["ms"])  # fmt: skip
        done[stage.name] = {"options": len(makers), "timed_now": len(todo), "dense_ms": dense_ms}
    return measured, tables, done


def _settings(spec: dict[str, Any], name: str, facts: Any) -> dict[str, Any]:
    """What the cached times depend on: the model's structure and where it was timed."""
    return {"model": next(s["model"] for s in spec["stages"] if s["name"] == name),
            "groups": facts.sizes, "inputs": [list(t.shape) for t in facts.example.tensors()],
            **_where(spec), "policy": dataclasses.asdict(OPTION_POLICY), "rounds": OPTION_ROUNDS}  # fmt: skip


# where the options were timed, a key the file leaves out meaning its default: a file that
# spells out a default and one that leaves it out time the same pipeline
WHERE_DEFAULTS = {"device": "cpu", "backend": "eager", "dtype": "float32", "threads": None,
                  "batch_size": 1}  # fmt: skip


def _where(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: default if spec.get(k) is None else spec[k] for k, default in WHERE_DEFAULTS.items()}


# the cache files a pipeline run writes beside the tables and sensitivities, per stage
CACHE_FILES = {"options": "{}.options.json", "losses": "{}.losses.json"}


def cache_kind(path: Path) -> str:
    """The format a cache file records: ``prunekit-pipeline-options`` for ``NAME.options.json``."""
    return "prunekit-pipeline-" + path.name.removesuffix(".json").rpartition(".")[2]


def check_cache_files(cache: Path, names: list[str]) -> None:
    """Refuse, before any work, a file in ``cache`` where a stage's cache file goes that
    prunekit did not write (it would be replaced)."""
    for name in names:
        for pattern in CACHE_FILES.values():
            _read_own(cache / pattern.format(name))


def _read_own(path: Path) -> dict[str, Any] | None:
    """The cache file at ``path`` (None: there is none); a file there that prunekit did not
    write is refused, since ``save_cached`` would replace it."""
    if not path.exists():
        return None
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = None
    # files of earlier versions carry no format, only their settings
    ours = isinstance(known, dict) and (known.get("format") == cache_kind(path) or (
        "format" not in known and isinstance(known.get("settings"), dict)))  # fmt: skip
    if not ours:
        raise OutputPathError(f"refusing to replace {path}: it is not a prunekit pipeline cache "
                              f"file (move it, or point cache: at another folder)")  # fmt: skip
    assert isinstance(known, dict)
    return known


def load_cached(path: Path | None, settings: dict[str, Any], field: str,
                normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                ) -> dict[str, Any]:  # fmt: skip
    """The cache file ``{"format": ..., "settings": ..., field: {...}}`` when its settings
    (``normalize``d) are these, else an empty one (a stale file of ours is remade)."""
    kind = cache_kind(path) if path is not None else ""
    fresh = {"format": kind, "settings": settings, field: {}}
    known = _read_own(path) if path is not None else None
    if known is None or not isinstance(stored := known.get("settings"), dict):
        return fresh
    same = (normalize(stored) if normalize else stored) == json.loads(json.dumps(settings))
    return {**known, "format": kind} if same else fresh


def save_cached(path: Path | None, known: dict[str, Any]) -> None:
    """Write a cache file made by ``load_cached`` (atomically: an interrupt mid-write leaves
    the previous file, never half of one)."""
    if path is not None:
        text = json.dumps(known, indent=1) + "\n"
        write_file_atomic(path, lambda f: f.write(text))
