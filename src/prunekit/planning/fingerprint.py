"""A stable identity for a model's prunable structure, shared by every planning file.

Sensitivity files, latency tables and plans are computed on one machine and used on another;
each records this fingerprint, and loading one for a different model is an error rather than
a silently wrong plan. The fingerprint covers what a plan refers to -- the prunable groups'
names and sizes, every parameter's name and shape, and the example input shapes -- but not
the weights, so a fine-tuned or re-initialised copy of the same architecture matches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

from prunekit.errors import PrunekitError
from prunekit.graph import ChannelGraph, Group
from prunekit.inputs import ExampleInputs


class PlanningFileError(PrunekitError):
    """A sensitivity, latency or plan file that does not belong to this model (or is broken)."""


def _keyed_groups(graph: ChannelGraph) -> list[Group]:
    """Groups that have keys: prunable as traced. ``unsafe`` marks are ignored, since they
    appear only once ``check_groups`` or ``prune`` ran: keys and fingerprints must not depend
    on whether that happened."""
    return [g for g in graph.groups if g.size >= 2 and bool(g.removable.any())]


def group_keys(graph: ChannelGraph) -> dict[int, str]:
    """group id -> a unique, readable key: the producing module's name, with ``#2``, ``#3``...
    appended in graph order when several prunable groups share one."""
    keys: dict[int, str] = {}
    seen: dict[str, int] = {}
    for group in _keyed_groups(graph):
        seen[group.name] = seen.get(group.name, 0) + 1
        n = seen[group.name]
        keys[group.id] = group.name if n == 1 else f"{group.name}#{n}"
    return keys


def groups_by_key(graph: ChannelGraph) -> dict[str, Group]:
    keys = group_keys(graph)
    return {keys[g.id]: g for g in graph.prunable}


def structure(
    graph: ChannelGraph, tensors: Mapping[str, torch.Tensor], example: ExampleInputs
) -> dict[str, Any]:
    """What the fingerprint hashes, readable (so a mismatch can say what differs)."""
    keys = group_keys(graph)
    return {
        "groups": {keys[g.id]: g.size for g in _keyed_groups(graph)},
        "parameters": {name: list(t.shape) for name, t in tensors.items()},
        "inputs": [list(t.shape) for t in example.tensors()],
    }


def fingerprint(
    graph: ChannelGraph, tensors: Mapping[str, torch.Tensor], example: ExampleInputs
) -> str:
    text = json.dumps(structure(graph, tensors, example), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_fingerprint(what: str, recorded: str, actual: str, recorded_model: str = "") -> None:
    if recorded != actual:
        model = f" (it was made for {recorded_model})" if recorded_model else ""
        raise PlanningFileError(
            f"{what} was computed for a different model or input shape{model}: fingerprint "
            f"{recorded} != {actual} for this one; recompute it for this model"
        )
