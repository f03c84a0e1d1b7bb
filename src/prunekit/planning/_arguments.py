"""Argument checks of the planning API (``analyze_sensitivity``, ``make_plan``, ``apply_plan``).

Each raises ``InvalidArgumentError`` (a ``PrunekitError`` and a ``TypeError``) or
``InvalidValueError`` (also a ``ValueError``) naming the argument, what it got and what to
pass, before any work is done. The values the planning functions already refused with their
own errors (``PlanError``, ``PlanningFileError``) are left to them. Imported by those
functions when called, so that this module may import theirs.
"""

from __future__ import annotations

import numbers
import os
from typing import Any

from prunekit._checks import (
    check_callable,
    check_mapping,
    check_module,
    check_number,
    check_sequence,
    check_type,
    got,
)
from prunekit.errors import InvalidArgumentError
from prunekit.graph import ChannelGraph
from prunekit.inputs import check_example

_SCORES = "a dict of group id -> per-atom scores (prunekit.criteria.group_scores)"
_LOG = "a function taking one string"


def _check_graph(graph: Any, *, optional: bool = False) -> None:
    if optional and graph is None:
        return
    if not isinstance(graph, ChannelGraph):
        raise InvalidArgumentError(
            f"graph must be a prunekit.graph.ChannelGraph{' or None' if optional else ''}: "
            f"trace it with prunekit.graph.trace_channels(model, example), got {got(graph)}"
        )


def _check_loaded(value: Any, name: str, cls: type, what: str) -> None:
    """``value`` must be a ``cls``; a path gets the hint to load it with ``cls.load``."""
    if isinstance(value, cls):
        return
    hint = ""
    if isinstance(value, (str, os.PathLike)):
        hint = f"; to read one from a file pass {cls.__name__}.load(path)"
    raise InvalidArgumentError(f"{name} must be {what}, got {got(value)}{hint}")


def _check_common(model: Any, example: Any, scores: Any) -> None:
    check_module(model)
    check_example(example, "example")
    check_mapping(scores, "scores", _SCORES)


def check_sensitivity_arguments(
    model: Any,
    example: Any,
    graph: Any,
    metric: Any,
    *,
    ratios: Any,
    scores: Any,
    round_to: Any,
    cache: Any,
    model_name: Any,
    block_batches: Any,
    settings: Any,
    log: Any,
) -> None:
    """The arguments of ``prunekit.planning.sensitivity.analyze_sensitivity``."""
    _check_common(model, example, scores)
    _check_graph(graph)
    check_callable(
        metric,
        "metric",
        "a function model -> drop, such as OutputDivergence(model, batches) or "
        "AccuracyDrop(model, loader)",
    )
    check_sequence(
        ratios,
        "ratios",
        "a sequence of fractions in (0, 1) such as (0.25, 0.5, 0.75)",
        items=numbers.Real,
    )
    check_number(round_to, "round_to", low=1, integer=True)
    if cache is not None:
        check_type(cache, (str, os.PathLike), "cache", "a file path (str or Path) or None")
    check_type(model_name, str, "model_name", "a string")
    check_sequence(
        block_batches,
        "block_batches",
        "a list of example inputs (one batch each) or None",
        optional=True,
    )
    check_mapping(settings, "settings", "a dict of JSON values")
    check_callable(log, "log", _LOG)


def check_plan_arguments(
    model: Any,
    example: Any,
    graph: Any,
    sensitivity: Any,
    target: Any,
    *,
    lut: Any,
    scores: Any,
    round_to: Any,
    protect: Any,
    importance: Any,
    latency_weight: Any,
    log: Any,
) -> None:
    """The arguments of ``prunekit.planning.planner.make_plan``."""
    from prunekit.planning.planner import Target
    from prunekit.planning.sensitivity import Sensitivity

    _check_common(model, example, scores)
    _check_graph(graph)
    _check_loaded(
        sensitivity,
        "sensitivity",
        Sensitivity,
        "a prunekit.planning.sensitivity.Sensitivity (from analyze_sensitivity)",
    )
    if not isinstance(target, Target):
        hint = f"; from text pass Target.parse({target!r})" if isinstance(target, str) else ""
        raise InvalidArgumentError(
            "target must be a prunekit.planning.planner.Target such as Target('macs', 0.5), "
            f"got {got(target)}{hint}"
        )
    if lut is not None:
        from prunekit.planning.lut import LatencyTable

        _check_loaded(lut, "lut", LatencyTable, "a prunekit.planning.lut.LatencyTable or None")
    check_number(round_to, "round_to", integer=True)  # a value below 1 is a PlanError
    check_sequence(protect, "protect", "a list of module names or 're:' patterns", items=str)
    check_type(importance, str, "importance", "the name of a criterion such as 'l1'")
    check_number(latency_weight, "latency_weight")  # a negative one is a PlanError
    check_callable(log, "log", _LOG)


def check_apply_arguments(
    model: Any, example: Any, plan: Any, *, graph: Any, scores: Any, batches: Any
) -> None:
    """The arguments of ``prunekit.planning.apply.apply_plan``."""
    from prunekit.planning.planner import Plan

    _check_common(model, example, scores)
    _check_loaded(plan, "plan", Plan, "a prunekit.planning.planner.Plan (from make_plan)")
    _check_graph(graph, optional=True)
    check_sequence(
        batches, "batches", "a list of example inputs (one batch each) or None", optional=True
    )
