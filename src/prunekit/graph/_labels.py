"""Channel labels: how prunekit knows which channels must be removed together.

Every prunable index of every parameter (a conv's output channel, a linear layer's input
feature, a BatchNorm scale) gets an integer *label* the first time the parameter is used in
the forward pass. While the model runs, each activation carries the labels of the channels it
holds, as a ``Factor``: the tensor dimensions that carry channel identity and a label array
over them (``-1`` where a position has no channel identity, e.g. zero padding). Rules for
each operation move labels from inputs to outputs and record *unions*: "these two labels
must be removed together" (a residual add unions its operands' channels position by
position; a linear layer unions its input features with its weight columns).

After tracing, the connected components of the union graph are the *atoms*: the smallest
sets of parameter slices that can be removed while keeping every shape consistent. Labels
that meet something no rule understands are *blocked* (never removed, reported by name);
labels whose removal changes normalisation statistics are *mixing* (removal is valid, but
not exactly function-preserving).

Labels are int64 numpy arrays so that unions of thousands of channels are one vectorised
call; the components are computed once at the end with scipy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NO_LABEL = -1


@dataclass
class Factor:
    """Channel identity of a tensor over some of its dimensions.

    ``labels.shape == tuple(tensor.shape[d] for d in dims)``; dims are sorted ascending.
    """

    dims: tuple[int, ...]
    labels: np.ndarray

    def grid(self, shape: tuple[int, ...]) -> np.ndarray:
        """Labels broadcast over the full tensor ``shape`` (a read-only view, no copy)."""
        expanded = [1] * len(shape)
        for axis, d in enumerate(self.dims):
            expanded[d] = self.labels.shape[axis]
        return np.broadcast_to(self.labels.reshape(expanded), shape)


def factor_from_grid(grid: np.ndarray) -> Factor | None:
    """The most compact Factor equal to ``grid``: the dims along which labels vary.

    A size-1 dimension never carries identity (one channel cannot be removed without removing
    the tensor), so it is dropped. Returns None when no position carries a label.
    """
    if grid.size == 0 or not np.any(grid >= 0):
        return None
    dims = []
    reduced = grid
    for d in range(grid.ndim):
        if grid.shape[d] == 1:
            continue
        first = np.take(reduced, [0], axis=d)
        if np.array_equal(reduced, np.broadcast_to(first, reduced.shape)):
            reduced = first
        else:
            dims.append(d)
    if not dims:
        return None
    labels = reduced.reshape([grid.shape[d] for d in dims])
    return Factor(tuple(dims), np.ascontiguousarray(labels))


@dataclass
class Member:
    """Slices of one parameter or buffer: index ``i`` of dimension ``dim`` has ``labels[i]``."""

    owner: str  # qualified name of the parameter / buffer, e.g. "features.0.0.weight"
    dim: int
    labels: np.ndarray
    is_buffer: bool = False


@dataclass
class LabelSpace:
    """Allocates labels and records unions, blocks, mixing marks and consumer roles."""

    count: int = 0
    members: list[Member] = field(default_factory=list)
    _edges_a: list[np.ndarray] = field(default_factory=list)
    _edges_b: list[np.ndarray] = field(default_factory=list)
    blocked: list[tuple[np.ndarray, str]] = field(default_factory=list)
    mixing: list[tuple[np.ndarray, str]] = field(default_factory=list)
    consumer: list[np.ndarray] = field(default_factory=list)
    ignored: list[np.ndarray] = field(default_factory=list)

    def fresh(self, shape: tuple[int, ...] | int) -> np.ndarray:
        n = int(np.prod(shape)) if not isinstance(shape, int) else shape
        labels = np.arange(self.count, self.count + n, dtype=np.int64)
        self.count += n
        return labels.reshape(shape)

    def union(self, a: np.ndarray, b: np.ndarray, reason: str) -> None:
        """Couple ``a`` and ``b`` position by position (same shape after broadcasting).

        A labelled position facing an unlabelled one cannot be removed consistently: the
        labelled side is blocked with ``reason``.
        """
        a, b = np.asarray(a), np.asarray(b)
        expanded = a.shape != b.shape
        a, b = np.broadcast_arrays(a, b)
        has_a, has_b = a >= 0, b >= 0
        both = has_a & has_b & (a != b)
        if both.any():
            self._add_edges(a[both], b[both], dedupe=expanded)
        if not (has_a == has_b).all():
            self.block(np.concatenate([a[has_a & ~has_b], b[has_b & ~has_a]]), reason)

    def _add_edges(self, a: np.ndarray, b: np.ndarray, dedupe: bool = True) -> None:
        # broadcast views repeat the same pair many times (a head label against every
        # attention score of that head): keep each pair once
        if dedupe and a.size > 64:
            keys = np.unique((a.astype(np.int64) << 32) | b.astype(np.int64))
            a, b = keys >> 32, keys & 0xFFFFFFFF
        self._edges_a.append(a.ravel())
        self._edges_b.append(b.ravel())

    def union_all(self, labels: np.ndarray) -> None:
        """Couple every label in ``labels`` into one atom."""
        flat = np.unique(labels[labels >= 0])
        if flat.size > 1:
            self._add_edges(np.full(flat.size - 1, flat[0]), flat[1:])

    def block(self, labels: np.ndarray, reason: str) -> None:
        flat = np.asarray(labels)[np.asarray(labels) >= 0].ravel()
        if flat.size:
            self.blocked.append((flat, reason))

    def mix(self, labels: np.ndarray, reason: str) -> None:
        flat = np.asarray(labels)[np.asarray(labels) >= 0].ravel()
        if flat.size:
            self.mixing.append((flat, reason))

    def ignore(self, labels: np.ndarray) -> None:
        """Labels of dimensions that are never channels (a kernel's height): not reported."""
        flat = np.asarray(labels)[np.asarray(labels) >= 0].ravel()
        if flat.size:
            self.ignored.append(flat)
            self.block(flat, "not a channel dimension")

    def mark_consumer(self, labels: np.ndarray) -> None:
        """These labels index a weight slice that *reads* a channel (a conv/linear input).

        Zeroing the consumer slices of a channel makes it dead: nothing downstream sees it.
        The correctness oracle uses this to build the dead-channel reference model.
        """
        flat = np.asarray(labels)[np.asarray(labels) >= 0].ravel()
        if flat.size:
            self.consumer.append(flat)

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._edges_a:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        return np.concatenate(self._edges_a), np.concatenate(self._edges_b)
