"""The importance criteria of structured pruning, by name: one registry, readable without torch.

Each entry names the function that computes it as ``"module:function"``, imported only when
the criterion is used, so that listing the names (``criterion_names()``: the CLI's choices,
the configs' validation) imports nothing heavy. Every such function has the signature
``score(model, graph, request: ScoreRequest) -> GroupScores`` (``prunekit.criteria._common``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prunekit.errors import PrunekitError

__all__ = [
    "CRITERIA",
    "DATA_CRITERIA",
    "Criterion",
    "CriterionError",
    "PruneConfigError",
    "criterion_names",
    "load",
]


class PruneConfigError(PrunekitError):
    """A pruning configuration that cannot be applied (bad ratio, pattern, criterion...).

    Defined on the criteria floor, the lowest that raises it; ``prunekit.pruning.config``
    re-exports it."""


class CriterionError(PruneConfigError):
    """An importance criterion cannot be computed as asked (unknown name, missing data...)."""


@dataclass(frozen=True)
class Criterion:
    name: str
    needs_data: bool  # needs calibration batches
    summary: str
    function: str  # "module:function" computing the scores


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion(
            "l1",
            False,
            "L1 norm of the group's weight slices (DepGraph group magnitude)",
            "prunekit.criteria.magnitude:score",
        ),
        Criterion(
            "l2",
            False,
            "L2 norm of the group's weight slices (DepGraph group magnitude)",
            "prunekit.criteria.magnitude:score",
        ),
        Criterion(
            "taylor",
            True,
            "first-order Taylor loss change (Molchanov et al. 2019)",
            "prunekit.criteria.taylor:score",
        ),
        Criterion(
            "bn_scale",
            False,
            "|gamma| of normalisation layers (Network Slimming)",
            "prunekit.criteria.bn_scale:score",
        ),
        Criterion(
            "mean_activation",
            True,
            "mean ReLU'd output of each channel",
            "prunekit.criteria.activation:score",
        ),
        Criterion(
            "apoz",
            True,
            "1 - average percentage of zeros (Network Trimming)",
            "prunekit.criteria.activation:score",
        ),
        Criterion(
            "random",
            False,
            "seeded uniform random scores (a baseline)",
            "prunekit.criteria.random:score",
        ),
    )
}
DATA_CRITERIA = frozenset(name for name, c in CRITERIA.items() if c.needs_data)


def criterion_names(*, needs_data: bool | None = None) -> tuple[str, ...]:
    """The criteria's names in registry order; ``needs_data=False`` (``True``): only those
    that need no (that need) calibration data."""
    return tuple(
        name for name, c in CRITERIA.items() if needs_data is None or c.needs_data == needs_data
    )


def load(name: str) -> Callable[..., Any]:
    """The function computing criterion ``name``; ``CriterionError`` for an unknown name."""
    if name not in CRITERIA:
        raise CriterionError(
            f"unknown importance criterion {name!r}; choose one of: {', '.join(CRITERIA)}"
        )
    module, _, function = CRITERIA[name].function.partition(":")
    score: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return score
