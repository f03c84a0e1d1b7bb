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
from collections.abc import Mapping, Sequence
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


def _shapes(shapes: Sequence[Sequence[int]]) -> str:
    return ", ".join("x".join(map(str, s)) for s in shapes) or "(no tensors)"


def structure_differences(
    groups: Mapping[str, int],
    inputs: Sequence[Sequence[int]] | None,
    now: Mapping[str, Any],
    *,
    limit: int = 4,
    noun: str = "file",
) -> list[str]:
    """What differs between a file's recorded groups (key -> size) and input shapes and the
    model's ``structure``: for the message of a fingerprint mismatch. Groups the file lacks
    count even for a file an interrupted run left unfinished: the fingerprint covers the whole
    model, so a partial file of this very model would have matched."""
    found = []
    if inputs is not None and [list(s) for s in inputs] != now["inputs"]:
        found.append(
            f"it was made with input shapes {_shapes(inputs)}, this model is called with "
            f"{_shapes(now['inputs'])}"
        )
    current: Mapping[str, int] = now["groups"]
    for name, size in groups.items():
        if name not in current:
            found.append(f"group {name!r} ({size} channels) is not in this model")
        elif current[name] != size:
            found.append(f"group {name!r} has {current[name]} channels here, {size} in the {noun}")
    extra = [n for n in current if n not in groups]
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        found.append(
            f"this model has groups the {noun} lacks: {', '.join(map(repr, extra[:3]))}{more}"
        )
    if len(found) > limit:
        found = [*found[:limit], f"and {len(found) - limit} more differences"]
    return found


def check_fingerprint(
    what: str,
    recorded: str,
    actual: str,
    recorded_model: str = "",
    *,
    groups: Mapping[str, int] | None = None,
    inputs: Sequence[Sequence[int]] | None = None,
    now: Mapping[str, Any] | None = None,
) -> None:
    """Raise ``PlanningFileError`` when a file's fingerprint is not the model's, saying what
    differs when the file recorded its ``groups`` (key -> size) and ``inputs`` and ``now`` is
    the model's ``structure``."""
    if recorded == actual:
        return
    model = f" (it was made for {recorded_model})" if recorded_model else ""
    differences = (
        structure_differences(groups, inputs, now) if groups is not None and now is not None else []
    )
    detail = "; ".join(differences) or (
        "the parameter or buffer shapes differ (the prunable groups match)"
        if groups is not None and now is not None
        else f"fingerprint {recorded} != {actual}"
    )
    raise PlanningFileError(
        f"{what} was computed for a different model or input shape{model}: {detail}; "
        "recompute it for this model"
    )
