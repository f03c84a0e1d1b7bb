"""From recorded unions to atoms and groups.

* An **atom** is a connected component of the union graph: parameter slices that must be
  removed together (a conv's output channel, the BatchNorm entries of that channel, the
  next conv's input slice, a residual partner...).
* A **group** is a set of atoms that share a parameter dimension: the channels of one
  "width" of the network (all 64 channels after ``layer1.0.conv1``; the residual stream of a
  ResNet stage; the 12 heads of an attention layer). Pruning picks atoms within a group.

Everything is vectorised: a group stores, for each (tensor, dimension) it touches, the atom
of every index, so that a model with a million channel slices is grouped in well under a
second.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from prunekit.graph._context import UniformRequirement
from prunekit.graph._labels import LabelSpace
from prunekit.graph._labels import Member as LabelMember


@dataclass
class Member:
    """One (tensor, dimension) of a group: ``atom[i]`` is the group-local atom of index i."""

    owner: str  # qualified name of the parameter or buffer
    dim: int
    atom: np.ndarray
    consumer: np.ndarray  # per index: this slice reads the channel (zeroing it makes it dead)
    is_buffer: bool = False

    def indices(self, atoms: np.ndarray) -> np.ndarray:
        """Indices of this dimension that belong to ``atoms`` (group-local ids)."""
        return self.select(_mask(atoms, int(self.atom.max()) + 1))

    def select(self, chosen: np.ndarray) -> np.ndarray:
        """Indices whose atom is set in the boolean array ``chosen`` (indexed by atom)."""
        return np.flatnonzero(chosen[self.atom])


@dataclass
class Group:
    id: int
    size: int  # number of atoms
    members: list[Member]
    blocked: dict[int, str]  # local atom -> why it cannot be removed
    mixing: dict[int, str]  # local atom -> why its removal changes the function
    name: str  # the module that produces these channels, for messages
    modules: list[str]  # every module owning a tensor touched by this group
    unsafe: str | None = None  # set when removing any channel breaks the forward pass
    _counts: np.ndarray | None = field(default=None, repr=False)

    @property
    def removable(self) -> np.ndarray:
        mask = np.ones(self.size, dtype=bool)
        if self.blocked:
            mask[list(self.blocked)] = False
        return mask

    @property
    def prunable(self) -> bool:
        return self.unsafe is None and self.size >= 2 and bool(self.removable.any())

    @property
    def exact(self) -> bool:
        """Removing atoms leaves the function unchanged (no statistics across channels)."""
        return not self.mixing

    @property
    def blocked_reasons(self) -> list[str]:
        reasons = sorted(set(self.blocked.values()))
        return reasons + (
            [f"removing a channel breaks the forward pass: {self.unsafe}"] if self.unsafe else []
        )

    def counts(self) -> np.ndarray:
        """[members, atoms]: how many indices of each member every atom owns."""
        if self._counts is None:
            self._counts = np.stack(
                [np.bincount(m.atom, minlength=self.size) for m in self.members]
            )
        return self._counts

    def slices(self, atoms: np.ndarray) -> list[tuple[Member, np.ndarray]]:
        """(member, indices) owned by ``atoms``, for every member that has some."""
        chosen = _mask(atoms, self.size)
        found = []
        for m in self.members:
            idx = m.select(chosen)
            if idx.size:
                found.append((m, idx))
        return found


def _mask(atoms: np.ndarray, size: int) -> np.ndarray:
    chosen = np.zeros(size, dtype=bool)
    chosen[np.asarray(atoms, dtype=np.int64)] = True
    return chosen


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def _first_reason(
    n: int, records: list[tuple[np.ndarray, str]], atom_of: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """Per atom: index into the reasons list of the first reason recorded for it (-1: none)."""
    which = np.full(n, -1, dtype=np.int64)
    reasons: list[str] = []
    for labels, reason in records:
        atoms = atom_of[labels]
        fresh = atoms[which[atoms] < 0]
        if fresh.size:
            which[fresh] = len(reasons)
            reasons.append(reason)
    return which, reasons


def _module_of(owner: str) -> str:
    return owner.rpartition(".")[0]


def build_groups(space: LabelSpace, uniform: list[UniformRequirement]) -> list[Group]:
    n = space.count
    atom_of = _components(n, *space.edges())
    blocked_records = list(space.blocked)
    for req in uniform:  # position-indexed channels: all positions must share one atom
        labels = (
            req.labels.reshape(-1, req.labels.shape[-1])
            if req.labels.ndim
            else req.labels.reshape(1, 1)
        )
        atoms = np.where(labels >= 0, atom_of[np.maximum(labels, 0)], -1)
        first = atoms.max(axis=1, keepdims=True)
        bad_rows = ((atoms != first) & (atoms >= 0)).any(axis=1)
        if bad_rows.any():
            bad = labels[bad_rows]
            blocked_records.append((bad[bad >= 0], req.reason))
    block_which, block_reasons = _first_reason(n, blocked_records, atom_of)
    mix_which, mix_reasons = _first_reason(n, space.mixing, atom_of)
    ignored = np.zeros(n, dtype=bool)
    for labels in space.ignored:
        ignored[atom_of[labels]] = True
    is_consumer = np.zeros(n, dtype=bool)
    for labels in space.consumer:
        is_consumer[labels] = True

    members = [(m, atom_of[m.labels]) for m in space.members]
    members = [(m, atoms) for m, atoms in members if not ignored[atoms].all()]
    ea, eb = [], []
    for _, atoms in members:  # every atom of a member joins the member's first atom
        ea.append(np.full(atoms.size - 1, atoms[0]))
        eb.append(atoms[1:])
    empty = np.zeros(0, dtype=np.int64)
    group_of = _components(
        n, np.concatenate(ea) if ea else empty, np.concatenate(eb) if eb else empty
    )

    by_group: dict[int, list[tuple[LabelMember, np.ndarray]]] = defaultdict(list)
    for m, atoms in members:
        by_group[int(group_of[atoms[0]])].append((m, atoms))
    groups = []
    for gid, entries in by_group.items():
        global_atoms = np.unique(np.concatenate([atoms for _, atoms in entries]))
        group_members = []
        for m, atoms in entries:
            group_members.append(
                Member(
                    m.owner,
                    m.dim,
                    np.searchsorted(global_atoms, atoms),
                    is_consumer[m.labels],
                    m.is_buffer,
                )
            )
        blocked = {
            int(i): block_reasons[block_which[global_atoms[i]]]
            for i in np.flatnonzero(block_which[global_atoms] >= 0)
        }
        mixing = {
            int(i): mix_reasons[mix_which[global_atoms[i]]]
            for i in np.flatnonzero(mix_which[global_atoms] >= 0)
        }
        modules = sorted({_module_of(gm.owner) for gm in group_members})
        producers = [
            gm.owner
            for gm in group_members
            if gm.dim == 0 and not gm.consumer.any() and not gm.is_buffer
        ]
        name = _module_of(producers[0]) if producers else modules[0]
        groups.append(Group(gid, len(global_atoms), group_members, blocked, mixing, name, modules))
    return groups  # in order of first use, i.e. roughly execution order
