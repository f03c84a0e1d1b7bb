"""The state a tracing rule reads and writes: which tensors carry which channel labels.

Rules never touch the tracer directly; they see a ``RuleContext``: look up the factors of a
tensor (``factors``), give an output its factors (``set``), and record unions, blocks,
mixing marks and consumer slices in the shared ``LabelSpace``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from prunekit.graph._labels import Factor, LabelSpace, Member


@dataclass
class UniformRequirement:
    """Deferred check: along the last axis of ``labels`` all entries must share one atom.

    Position-based indexing (``x[:, 5]``) stays correct after pruning only if no channel before
    the index can be removed on its own; that is only known once all unions are in.
    """

    labels: np.ndarray  # [..., n]
    reason: str


@dataclass
class RuleContext:
    space: LabelSpace
    param_names: dict[int, tuple[str, bool]]  # id(tensor) -> (qualified name, is_buffer)
    _labels: dict[int, tuple[torch.Tensor, list[Factor]]] = field(default_factory=dict)
    _param_labels: dict[str, list[Factor]] = field(default_factory=dict)
    _param_derived: dict[int, torch.Tensor] = field(default_factory=dict)
    _blank: dict[int, torch.Tensor] = field(default_factory=dict)
    uniform: list[UniformRequirement] = field(default_factory=list)
    where: str = ""
    op: str = ""

    # -- looking labels up ------------------------------------------------------------------
    def factors(self, t: Any) -> list[Factor]:
        """Factors of ``t`` (empty for unlabelled tensors and non-tensors)."""
        if not isinstance(t, torch.Tensor):
            return []
        entry = self._labels.get(id(t))
        if entry is not None and entry[0] is t:
            return entry[1]
        named = self.param_names.get(id(t))
        if named is not None:
            return self._param_factors(t, *named)
        return []

    def _param_factors(self, t: torch.Tensor, name: str, is_buffer: bool) -> list[Factor]:
        """Parameters get one fresh label per index of every dimension on first use."""
        factors = self._param_labels.get(name)
        if factors is None:
            factors = []
            for d, size in enumerate(t.shape):
                if size > 1:
                    labels = self.space.fresh(size)
                    self.space.members.append(Member(name, d, labels, is_buffer))
                    factors.append(Factor((d,), labels))
            self._param_labels[name] = factors
        return factors

    def is_param_derived(self, t: Any) -> bool:
        if not isinstance(t, torch.Tensor):
            return True  # python scalars are constants
        if id(t) in self.param_names:
            return True
        entry = self._param_derived.get(id(t))
        return entry is not None and entry is t

    def is_blank(self, t: torch.Tensor) -> bool:
        entry = self._blank.get(id(t))
        return entry is not None and entry is t

    def mark_blank(self, t: torch.Tensor) -> None:
        self._blank[id(t)] = t

    def labelled(self, t: Any) -> bool:
        return bool(self.factors(t))

    # -- writing labels ---------------------------------------------------------------------
    def set(self, t: Any, factors: Sequence[Factor | None], param_derived: bool = False) -> None:
        if not isinstance(t, torch.Tensor):
            return
        kept = [f for f in factors if f is not None]
        self._blank.pop(id(t), None)
        if kept:
            self._labels[id(t)] = (t, kept)
        else:
            self._labels.pop(id(t), None)
        if param_derived:
            self._param_derived[id(t)] = t

    # -- recording ----------------------------------------------------------------------------
    def reason(self, detail: str = "") -> str:
        where = f" in {self.where}" if self.where else ""
        return f"{self.op}{where}" + (f": {detail}" if detail else "")

    def union(self, a: np.ndarray, b: np.ndarray, detail: str = "") -> None:
        self.space.union(a, b, self.reason(detail or "channels meet unlabelled values"))

    def block(self, labels: np.ndarray, detail: str = "") -> None:
        self.space.block(labels, self.reason(detail))

    def block_tensors(self, tensors: list[Any], detail: str = "") -> None:
        for t in tensors:
            for f in self.factors(t):
                self.block(f.labels, detail)

    def mix(self, labels: np.ndarray, detail: str = "") -> None:
        self.space.mix(labels, self.reason(detail))

    def require_uniform(self, labels: np.ndarray, detail: str) -> None:
        self.uniform.append(UniformRequirement(np.asarray(labels), self.reason(detail)))


def tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in nested tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v)
