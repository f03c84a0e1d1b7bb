"""What to prune: one small frozen dataclass, round-trippable to a dict (and to YAML).

Per-layer settings are keyed by module *name*, never by module object, so that a recipe file
can say everything the Python API can. A pattern is either an exact module name (which also
covers that module's submodules) or ``re:<regex>`` matched with ``re.fullmatch``.
Precedence for ``ratios``: an exact name beats a regex; among regexes the first listed wins.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from prunekit.criteria.registry import PruneConfigError, criterion_names

# Importance criteria (the ``prunekit.criteria.registry``). Those that need no data are
# computed by ``prune`` itself; the data criteria need calibration batches, so their scores
# come from ``prunekit.criteria.group_scores``.
IMPORTANCE = criterion_names()
DATA_IMPORTANCE = criterion_names(needs_data=True)


def matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or name.startswith(pattern + ".")


_MODULE_NAME = re.compile(r"[\w.]+")


def check_pattern(pattern: Any, what: str) -> None:
    """A pattern as a user types it: ``re:<regex>``, a module name, or (on the command line) a
    bare regular expression; a regex must compile."""
    if not isinstance(pattern, str) or not pattern:
        raise PruneConfigError(f"{what}: pattern must be a non-empty string, got {pattern!r}")
    regex = pattern[3:] if pattern.startswith("re:") else pattern
    if pattern.startswith("re:") or not _MODULE_NAME.fullmatch(pattern):
        try:
            re.compile(regex)
        except re.error as exc:
            raise PruneConfigError(f"{what}: invalid regex {regex!r}: {exc}") from None


def _check_pattern(pattern: Any, what: str) -> None:
    """A configuration pattern: an exact module name, or ``re:<regex>`` that compiles."""
    if not isinstance(pattern, str) or not pattern:
        raise PruneConfigError(f"{what}: pattern must be a non-empty string, got {pattern!r}")
    if pattern.startswith("re:"):
        check_pattern(pattern, what)


def as_patterns(values: Iterable[str], module_names: Iterable[str]) -> tuple[str, ...]:
    """Command-line patterns: module names stay names, anything else becomes ``re:``."""
    names = set(module_names)
    return tuple(v if v.startswith("re:") or v in names else "re:" + v for v in values)


def check_patterns_match(patterns: Iterable[str], module_names: list[str], what: str) -> None:
    """Every pattern must match at least one module (a typo must not silently do nothing);
    name the closest ones if not."""
    for pattern in patterns:
        if not any(matches(pattern, n) for n in module_names):
            target = pattern[3:] if pattern.startswith("re:") else pattern
            close = difflib.get_close_matches(target, module_names, n=3, cutoff=0.5)
            hint = f"; closest modules: {', '.join(close)}" if close else ""
            raise PruneConfigError(f"{what} pattern {pattern!r} matches no module{hint}")


def _check_ratio(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise PruneConfigError(f"{what} must be a number in [0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class StructuredPruning:
    """Remove whole channels / neurons / attention heads.

    ``ratio``: the fraction of each prunable group's channels to remove (0.3 removes 30%).
    ``ratios``: per-group overrides, ``{pattern: ratio}``; a group matches when one of the
    modules *producing* its channels matches. ``ignore``: modules whose tensors keep their
    shapes. ``round_to``: keep a multiple of this many channels per group (e.g. 8 for
    tensor cores). ``importance``: how channels are ranked, one of ``IMPORTANCE``: ``l1`` or
    ``l2`` magnitude, summed over every slice of the group (each layer's scores normalised by
    its mean); ``bn_scale`` (``|gamma|`` of normalisation layers); ``random`` (seed 0); or a
    criterion that needs calibration data (``taylor``, ``mean_activation``, ``apoz``), whose
    scores are computed with ``prunekit.criteria.group_scores`` and passed to ``prune``.
    """

    ratio: float = 0.0
    ratios: Mapping[str, float] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    round_to: int = 1
    importance: str = "l1"

    def __post_init__(self) -> None:
        _check_ratio(self.ratio, "ratio")
        for pattern, value in self.ratios.items():
            _check_pattern(pattern, "ratios")
            _check_ratio(value, f"ratios[{pattern!r}]")
        object.__setattr__(self, "ignore", tuple(self.ignore))
        object.__setattr__(self, "ratios", dict(self.ratios))
        for pattern in self.ignore:
            _check_pattern(pattern, "ignore")
        if (
            isinstance(self.round_to, bool)
            or not isinstance(self.round_to, int)
            or self.round_to < 1
        ):
            raise PruneConfigError(f"round_to must be a positive integer, got {self.round_to!r}")
        if self.importance not in IMPORTANCE:
            raise PruneConfigError(
                f"unknown importance {self.importance!r}; choose one of: {', '.join(IMPORTANCE)}"
            )

    def ratio_for(self, producers: Iterable[str]) -> float:
        names = list(producers)
        for pattern, value in self.ratios.items():
            if not pattern.startswith("re:") and any(matches(pattern, n) for n in names):
                return value
        for pattern, value in self.ratios.items():
            if pattern.startswith("re:") and any(matches(pattern, n) for n in names):
                return value
        return self.ratio

    def is_ignored(self, module: str) -> bool:
        return any(matches(p, module) for p in self.ignore)

    def check_patterns(self, module_names: list[str]) -> None:
        """Every pattern must match at least one module; name the closest ones if not."""
        check_patterns_match(self.ignore, module_names, "ignore")
        check_patterns_match(tuple(self.ratios), module_names, "ratios")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ignore"] = list(self.ignore)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StructuredPruning:
        unknown = set(data) - {"ratio", "ratios", "ignore", "round_to", "importance"}
        if unknown:
            raise PruneConfigError(f"unknown pruning settings: {', '.join(sorted(unknown))}")
        return cls(**{**data, "ignore": tuple(data.get("ignore", ()))})
