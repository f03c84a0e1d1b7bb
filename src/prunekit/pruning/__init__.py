"""Structured pruning: score -> select -> apply, on the groups ``prunekit.graph`` derives.

``prune(model, inputs, StructuredPruning(ratio=0.3))`` removes channels in place and returns a
``PruneResult``. Channels are ranked by ``config.importance``, or by precomputed scores
(``prune(..., scores=prunekit.criteria.group_scores(...))``), which data-driven criteria need.
After the surgery the model runs once on the ``meta`` device (shapes only, no arithmetic); if
that fails, a size is hard-coded in the model's Python code: the surgery is undone, the groups
responsible are found by bisection on a meta copy, left unpruned and reported, and the rest is
applied again. A model is never left half-pruned.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit._checks import check_module
from prunekit._utils import describe_exception, meta_copy, swapped_to_meta, without_gc
from prunekit.criteria import group_scores
from prunekit.errors import InvalidArgumentError
from prunekit.graph import ChannelGraph, trace_channels
from prunekit.graph._fast_meta import FastMetaNorms
from prunekit.inputs import ExampleInputs, as_example_inputs, doubled
from prunekit.pruning._sync import register_sync
from prunekit.pruning.config import (
    DATA_IMPORTANCE,
    PruneConfigError,
    StructuredPruning,
    matches,
)
from prunekit.pruning.select import GroupPlan, plan_group, plan_pruning, producers
from prunekit.pruning.surgery import ModelIndex, SurgeryRecord, remove_atoms, trial

log = logging.getLogger(__name__)

__all__ = [
    "GroupPlan",
    "PruneConfigError",
    "PruneResult",
    "StructuredPruning",
    "check_groups",
    "matches",
    "prune",
    "register_sync",
]


@dataclass
class PruneResult:
    graph: ChannelGraph
    plans: list[GroupPlan]
    surgery: SurgeryRecord
    skipped: dict[str, str] = field(default_factory=dict)  # group -> why it was left alone
    notes: list[str] = field(default_factory=list)  # what did not go exactly as configured

    @property
    def removed_atoms(self) -> int:
        return sum(len(p.remove) for p in self.plans)

    def groups_table(
        self, tensors: Mapping[str, torch.Tensor] | None = None
    ) -> list[dict[str, Any]]:
        rows = []
        for p in self.plans:
            rows.append(
                {
                    "group": p.group.name,
                    "kept": p.kept,
                    "total": p.group.size,
                    "ratio": p.ratio,
                    "exact": p.group.exact,
                    "producers": producers(p.group, tensors)
                    if tensors is not None
                    else p.group.modules,
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups_table(),
            "skipped": self.skipped,
            "notes": self.notes,
            "shapes": {k: {"before": v[0], "after": v[1]} for k, v in self.surgery.shapes.items()},
            "graph": {
                "prunable_groups": len(self.graph.prunable),
                "unsupported": dict(self.graph.unsupported),
                "modes": self.graph.modes,
                "notes": self.graph.notes,
            },
        }


def _runs(model: nn.Module, example: ExampleInputs, modes: list[str]) -> Exception | None:
    """Run ``model`` in each mode; the error it raises, or None."""
    was_training = model.training
    try:
        with torch.no_grad(), FastMetaNorms():
            for mode in modes:
                model.train(mode == "train")
                batch = example if mode == "eval" else doubled(example)
                batch.call(model)
    except Exception as exc:
        return exc
    finally:
        model.train(was_training)
    return None


def _rehearsal_copy(model: nn.Module, graph: ChannelGraph) -> nn.Module | None:
    """The meta copy rehearsals run on, made once per graph and undone after each use."""
    if graph.meta_model is None:
        graph.meta_model = meta_copy(model)
        if graph.meta_model is not None:
            graph.meta_index = ModelIndex.of(graph.meta_model)
    return graph.meta_model


def _rehearse(
    model: nn.Module,
    graph: ChannelGraph,
    example: ExampleInputs,
    plans: list[GroupPlan],
    modes: list[str],
) -> Exception | None:
    """Apply ``plans`` to a meta copy, run it, undo: the error it raised, or None."""
    meta = _rehearsal_copy(model, graph)
    if meta is None:
        return None
    with trial(meta, [(p.group, p.remove) for p in plans], graph.meta_index):
        return _runs(meta, example, modes)


def _culprits(
    model: nn.Module,
    graph: ChannelGraph,
    example: ExampleInputs,
    plans: list[GroupPlan],
    modes: list[str],
    error: Exception | None = None,
) -> dict[int, str]:
    """Bisect ``plans`` down to those whose removal breaks the forward pass (id -> error).

    ``error`` is the failure of all ``plans`` together, if already known.
    """
    found: dict[int, str] = {}

    def search(subset: list[GroupPlan], error: Exception | None) -> None:
        if error is None:
            return
        if len(subset) == 1:
            found[id(subset[0])] = describe_exception(error)
            return
        half = len(subset) // 2
        first = _rehearse(model, graph, example, subset[:half], modes)
        search(subset[:half], first)
        # if the first half runs, the failure is in the second: no need to rehearse it whole
        rest = error if first is None else _rehearse(model, graph, example, subset[half:], modes)
        search(subset[half:], rest)

    search(plans, error or _rehearse(model, graph, example, plans, modes))
    return found


def check_groups(model: nn.Module, example: ExampleInputs, graph: ChannelGraph) -> None:
    """Find groups whose removal breaks the forward pass, once per graph; mark them unsafe.

    A size hard-coded in Python (``x.reshape(B, G, P, D)`` with ``D`` read from another
    tensor) is invisible to tracing; removing one channel of every group on a meta copy and
    bisecting the failures finds such groups in a few meta-device runs.
    """
    if graph.checked or not graph.on_meta:
        return
    probe = [plan_group(g, count=1) for g in graph.prunable]
    probe = [p for p in probe if len(p.remove)]
    bad = _culprits(model, graph, example.to("meta"), probe, ["eval"])
    for p in probe:
        if id(p) in bad:
            p.group.unsafe = bad[id(p)]
            log.info("group %s cannot be pruned: %s", p.group.name, bad[id(p)])
    graph.checked = True


def _verify(model: nn.Module, example: ExampleInputs, graph: ChannelGraph) -> Exception | None:
    """Run the pruned model once, shapes only when possible: the error it raises, or None."""
    if not graph.on_meta:
        return _runs(model, example, graph.modes)
    with swapped_to_meta(model):
        return _runs(model, example.to("meta"), graph.modes)


def _checked_scores(
    graph: ChannelGraph,
    tensors: Mapping[str, torch.Tensor],
    config: StructuredPruning,
    scores: Mapping[int, Any],
) -> dict[int, np.ndarray]:
    """A copy of ``scores`` (the caller's dict is not filled in), checked against ``graph``:
    one finite score per atom; every group to prune must have scores unless the importance
    is a magnitude that ``plan_pruning`` can compute itself."""
    checked: dict[int, np.ndarray] = {}
    for group in graph.groups:
        if group.id not in scores:
            continue
        values = np.asarray(scores[group.id], dtype=np.float64)
        if values.shape != (group.size,) or not np.isfinite(values).all():
            what = "non-finite values" if values.shape == (group.size,) else values.shape
            raise PruneConfigError(
                f"scores of group {group.name} (id {group.id}) must be {group.size} finite "
                f"numbers, one per channel, got {what}: were they computed on another graph? "
                "Pass the graph they were computed on (prune(..., graph=graph))"
            )
        checked[group.id] = values
    if config.importance in ("l1", "l2"):
        return checked
    for group in graph.prunable:
        if any(config.is_ignored(m) for m in group.modules):
            continue
        if group.id not in checked and config.ratio_for(producers(group, tensors)) > 0:
            raise PruneConfigError(
                f"scores has no entry for group {group.name} (id {group.id}, {group.size} "
                f"channels), needed for importance {config.importance!r}: compute the scores on "
                "the graph you prune with (prune(..., graph=graph))"
            )
    return checked


@without_gc
def prune(
    model: nn.Module,
    inputs: ExampleInputs | torch.Tensor | tuple[Any, ...] | dict[str, Any],
    config: StructuredPruning | None = None,
    *,
    graph: ChannelGraph | None = None,
    scores: Mapping[int, np.ndarray] | None = None,
    keep: Mapping[int, int] | None = None,
    **settings: Any,
) -> PruneResult:
    """Remove channels from ``model`` in place according to ``config`` (or ``**settings``,
    the fields of ``StructuredPruning``). ``inputs`` are example inputs for one forward pass.

    ``scores``: precomputed importance, ``group.id -> one score per atom`` (higher = more
    important), as ``prunekit.criteria.group_scores`` returns; the lowest-scored atoms of each
    group are removed. Required for the criteria that need calibration data (``taylor``,
    ``mean_activation``, ``apoz``); ``bn_scale`` and ``random`` are computed here when
    omitted. Pass the ``graph`` the scores were computed on.

    ``keep``: exact channel counts for some groups (``group.id -> kept``), as a plan from
    ``prunekit.planning`` gives them; they override the config's ratios for those groups.
    """
    check_module(model)
    if config is None:
        config = StructuredPruning(**settings)
    elif settings:
        raise PruneConfigError(
            "pass either a StructuredPruning config or keyword settings, not both"
        )
    elif not isinstance(config, StructuredPruning):
        raise InvalidArgumentError(
            f"config must be a StructuredPruning, got {type(config).__name__} (for transformer "
            "heads and FFN neurons use prunekit.pruning.transformer.prune_transformer)"
        )
    if scores is None and config.importance in DATA_IMPORTANCE:
        raise PruneConfigError(
            f"importance {config.importance!r} needs calibration data, which prune() does not "
            f"take: compute the scores with prunekit.criteria.group_scores(model, graph, "
            f"{config.importance!r}, calibration=...) (graph = prunekit.graph.trace_channels("
            "model, inputs)) and pass them: prune(..., graph=graph, scores=scores)"
        )
    index = ModelIndex.of(model)
    config.check_patterns([n for n in index.modules if n])
    example = as_example_inputs(inputs)
    graph = graph or trace_channels(model, example)
    if scores is None and config.importance not in ("l1", "l2"):
        scores = group_scores(model, graph, config.importance)
    checked = _checked_scores(graph, index.tensors, config, scores) if scores is not None else None
    plans = [p for p in plan_pruning(graph, index.tensors, config, checked, keep) if len(p.remove)]
    skipped = {g.name: g.unsafe for g in graph.groups if g.unsafe is not None}
    record = remove_atoms(model, [(p.group, p.remove) for p in plans], index)
    error = _verify(model, example, graph) if plans else None
    if error is not None and graph.on_meta:
        # something in the model's code hard-codes a size: undo, find the groups, leave them
        record.undo()
        bad = _culprits(model, graph, example.to("meta"), plans, graph.modes, error)
        for p in plans:
            if id(p) in bad:
                p.group.unsafe = skipped[p.group.name] = bad[id(p)]
                log.warning(
                    "left group %s unpruned: removing its channels breaks the forward pass (%s)",
                    p.group.name,
                    bad[id(p)],
                )
        plans = [p for p in plans if id(p) not in bad]
        record = remove_atoms(model, [(p.group, p.remove) for p in plans], index)
        error = _verify(model, example, graph)
    if error is not None:
        record.undo()
        raise RuntimeError(
            f"pruning broke the forward pass ({describe_exception(error)}); the model was "
            "restored unchanged. Please report this model to prunekit."
        ) from error
    notes = [
        f"group {p.group.name} has {p.group.size} channels, fewer than round_to="
        f"{config.round_to}: its kept count ({p.kept}) is not a multiple of {config.round_to}"
        for p in plans
        if config.round_to > 1 and p.group.size < config.round_to
    ]
    return PruneResult(graph, plans, record, skipped, notes)
