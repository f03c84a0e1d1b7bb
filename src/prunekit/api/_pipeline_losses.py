"""``losses: measured``: every option's loss measured on the stage's fit items before the
allocation.

The sensitivity measures each group cut alone and the planner adds those drops up; deep cuts
of many groups at once cost more than the sum (seen here: a plan predicted to lose 0.24 lost
0.58 on held-out scenes). Pruning each frontier option whole and measuring its drop with the
same metric on the same fit items the sensitivity used replaces the sum with the
measurement, so the allocation trades what the options really lose. The held-out items stay
unseen until the final metrics. The drops are cached per stage in ``cache/`` and remade when
the model's weights, its groups, its inputs or the stage's data, metric or samples differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.api._pipeline_frontier import CACHE_FILES, load_cached, planned_model, save_cached


def weights_digest(model: nn.Module) -> str:
    """A digest of the model's parameters and buffers: the same structure retrained is
    another model for a loss."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def measure_losses(frontiers: list[Any], facts: dict[str, Any], spec: dict[str, Any],
                   cache: Path | None,
                   say: Callable[[str], object]) -> tuple[list[Any], dict[str, Any]]:  # fmt: skip
    """The frontiers with every option at its loss measured on fit items (Pareto again,
    unless the options are about to be timed whole and made Pareto then), and per stage how
    many options there were and how many were measured in this run."""
    from prunekit.planning.pipeline import Stage, keep_key, pareto

    timed_next = spec.get("frontier", "predicted") == "measured"
    out, done = [], {}
    for stage in frontiers:
        f = facts[stage.name]
        stage_spec = next(s for s in spec["stages"] if s["name"] == stage.name)
        settings = _settings(stage_spec, f)
        path = cache / CACHE_FILES["losses"].format(stage.name) if cache else None
        known = load_cached(path, settings, "loss")
        keys = {id(p): keep_key(p.plan.keep, p.plan.drop_blocks) for p in stage.points
                if p.plan is not None}  # fmt: skip
        todo = sorted(set(keys.values()) - set(known["loss"]))
        if todo:
            say(f"{stage.name}: measuring {len(todo)} options' loss on fit items "
                f"({len(set(keys.values())) - len(todo)} cached)")  # fmt: skip
        device = next(f.model.parameters()).device
        for p in stage.points:
            key = keys.get(id(p))
            if key is not None and key not in known["loss"]:
                known["loss"][key] = float(f.fit_drop(planned_model(f, p.plan).to(device)))
                save_cached(path, known)  # as it goes: an interrupted run keeps what it measured
        points = [p if p.plan is None else dataclasses.replace(p, loss=known["loss"][keys[id(p)]])
                  for p in stage.points]  # fmt: skip
        out.append(Stage(stage.name, stage.weight, stage.dense_ms,
                         points if timed_next else pareto(points)))  # fmt: skip
        done[stage.name] = {"options": len(set(keys.values())), "measured_now": len(todo)}
    return out, done


def _settings(stage: dict[str, Any], facts: Any) -> dict[str, Any]:
    """What a cached loss depends on: the model (weights included) and what it is scored on."""
    from prunekit.api.planning import SensitivityConfig

    # resolved, not as written: a changed default must not reuse losses measured on fewer items
    samples = SensitivityConfig.from_dict(stage.get("sensitivity") or {}).samples
    return {"model": stage["model"], "weights": weights_digest(facts.model),
            "groups": facts.sizes, "inputs": [list(t.shape) for t in facts.example.tensors()],
            "data": stage.get("data"), "metric": stage.get("metric", "agreement"),
            "drop": getattr(facts.fit_drop, "name", type(facts.fit_drop).__name__),
            "samples": samples}  # fmt: skip
