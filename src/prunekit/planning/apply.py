"""Apply a ``Plan`` to a model: the same channels the planner counted, removed for real."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from prunekit._tensors import named_tensors
from prunekit.graph import ChannelGraph, trace_channels
from prunekit.inputs import ExampleInputs, as_example_inputs
from prunekit.planning._arguments import check_apply_arguments
from prunekit.planning.fingerprint import check_fingerprint, fingerprint, group_keys, structure
from prunekit.planning.planner import Plan, PlanError
from prunekit.pruning import PruneResult, StructuredPruning, prune
from prunekit.pruning.blocks import drop_blocks, is_residual_block


def apply_plan(
    model: nn.Module,
    example: ExampleInputs | torch.Tensor,
    plan: Plan,
    *,
    graph: ChannelGraph | None = None,
    scores: Mapping[int, np.ndarray] | None = None,
    batches: Sequence[ExampleInputs | torch.Tensor] | None = None,
) -> PruneResult:
    """Prune ``model`` in place to the plan's channel counts.

    The plan must have been made for this architecture and input shape (fingerprint). Which
    channels go is decided by the plan's ``importance``: L1 magnitude is recomputed here (the
    weights may have been fine-tuned since), any other criterion needs its ``scores``.

    The plan's residual blocks lose their branch (``prunekit.pruning.blocks``), each replaced
    by the branch's mean output over ``batches`` (calibration inputs; by default the example
    input, a weak estimate that fine-tuning corrects).
    """
    check_apply_arguments(model, example, plan, graph=graph, scores=scores, batches=batches)
    example = as_example_inputs(example)
    graph = graph or trace_channels(model, example)
    tensors = named_tensors(model)
    check_fingerprint(
        "the plan", plan.fingerprint, fingerprint(graph, tensors, example), plan.model,
        groups=plan.sizes, inputs=plan.inputs, now=structure(graph, tensors, example),
    )  # fmt: skip
    if plan.importance not in ("l1", "l2") and scores is None:
        raise PlanError(
            f"the plan chooses channels by {plan.importance!r}: pass the scores "
            "(prunekit.criteria.group_scores) to apply it"
        )
    keys = group_keys(graph)
    by_key = {keys[g.id]: g for g in graph.groups if g.id in keys}
    unknown = sorted(set(plan.keep) - set(by_key))
    if unknown:
        raise PlanError(f"the plan names groups this model does not have: {', '.join(unknown)}")
    keep = {}
    for key, kept in plan.keep.items():
        group = by_key[key]
        if plan.sizes.get(key) != group.size:
            raise PlanError(
                f"the plan says group {key} has {plan.sizes.get(key)} channels; it has {group.size}"
            )
        if kept > group.size:
            raise PlanError(f"the plan keeps {kept} of group {key}'s {group.size} channels")
        if kept < group.size:
            if not group.prunable:
                raise PlanError(f"the plan prunes group {key}, which cannot be pruned")
            keep[group.id] = kept
    missing = [name for name in plan.drop_blocks if not is_residual_block(model, name)]
    if missing:
        raise PlanError(
            f"the plan drops {', '.join(missing)}, which this model has no residual block by"
        )
    config = StructuredPruning(importance=plan.importance)
    result = prune(model, example, config, graph=graph, scores=scores, keep=keep)
    # after the channel cuts, so that each branch's mean output has the pruned width
    drop_blocks(model, plan.drop_blocks, batches if batches is not None else [example])
    return result
