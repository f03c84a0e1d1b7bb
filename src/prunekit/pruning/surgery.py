"""Apply a removal: slice every affected parameter and buffer, then sync module attributes.

``remove_atoms`` cuts for good (its record can undo it); ``trial`` cuts for the duration of a
``with`` block (measure, evaluate, rehearse) and puts the model back exactly as it was, the
same tensor objects included, however the block ends.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit._tensors import replace_tensor, scan
from prunekit.graph import Group
from prunekit.pruning._sync import needs_sync, sync_module


@dataclass
class SurgeryRecord:
    shapes: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)  # name: (old, new)
    modules: list[str] = field(default_factory=list)
    # what undo() puts back: replaced tensors, and each synced module's class and attributes
    _tensors: list[tuple[list[tuple[nn.Module, str]], torch.Tensor]] = field(
        default_factory=list, repr=False
    )
    _modules: list[tuple[nn.Module, type, dict[str, Any]]] = field(default_factory=list, repr=False)

    def undo(self) -> None:
        """Restore the model exactly as it was before ``remove_atoms`` (rehearsals use this)."""
        for module, cls, attributes in reversed(self._modules):
            module.__class__ = cls
            module.__dict__.update(attributes)
        for holders, old in self._tensors:
            replace_tensor(holders, old, old, keep_object=True)
        self._tensors.clear()
        self._modules.clear()


def removal_indices(
    removals: Iterable[tuple[Group, np.ndarray]],
) -> dict[str, dict[int, np.ndarray]]:
    """tensor name -> dim -> sorted indices to remove, for (group, local atom ids) pairs."""
    collected: dict[str, dict[int, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for group, atoms in removals:
        if len(atoms) == 0:
            continue
        for member, idx in group.slices(np.asarray(atoms)):
            collected[member.owner][member.dim].append(idx)
    return {
        owner: {dim: np.unique(np.concatenate(parts)) for dim, parts in dims.items()}
        for owner, dims in collected.items()
    }


def _ancestors(names: Iterable[str]) -> set[str]:
    found = set()
    for name in names:
        while True:
            found.add(name)
            if not name:
                break
            name = name.rpartition(".")[0]
    return found


@dataclass
class ModelIndex:
    """Name <-> module and tensor <-> holder maps, built once and reused across surgeries.

    Valid as long as the module structure is unchanged (undo puts the original tensor
    objects back, so the maps stay true for a rehearsal copy too).
    """

    modules: dict[str, nn.Module]
    names: dict[int, str]
    tensors: dict[str, torch.Tensor]
    holders: dict[int, list[tuple[nn.Module, str]]]

    @classmethod
    def of(cls, model: nn.Module) -> ModelIndex:
        modules, tensors, holders = scan(model)
        return cls(modules, {id(m): n for n, m in modules.items()}, tensors, holders)


def remove_atoms(
    model: nn.Module, removals: Iterable[tuple[Group, np.ndarray]], index: ModelIndex | None = None
) -> SurgeryRecord:
    """Physically remove atoms from ``model`` (in place) and return what changed.

    All or nothing: if the surgery fails halfway, what it did is undone before the error
    propagates."""
    removal = removal_indices(removals)
    index = index or ModelIndex.of(model)
    record = SurgeryRecord()
    try:
        _cut(removal, index, record)
    except BaseException:
        record.undo()
        raise
    return record


def _cut(
    removal: dict[str, dict[int, np.ndarray]], index: ModelIndex, record: SurgeryRecord
) -> None:
    touched: dict[int, nn.Module] = {}
    for owner, dims in removal.items():
        old = index.tensors[owner]
        new = old.detach()
        for dim, drop in dims.items():
            keep = np.ones(old.shape[dim], dtype=bool)
            keep[drop] = False
            new = new.index_select(dim, torch.as_tensor(np.flatnonzero(keep), device=old.device))
        holder = index.holders[id(old)]
        replace_tensor(holder, old, new)
        record._tensors.append((holder, old))
        record.shapes[owner] = (list(old.shape), list(new.shape))
        for module, _ in holder:
            touched[id(module)] = module
    record.modules = sorted(index.names[i] for i in touched if i in index.names)
    # parents too, deepest first: an attention block whose projections changed may need a
    # class swap, a ViT its hidden size
    for name in sorted(_ancestors(record.modules), key=lambda n: -n.count(".") - (1 if n else 0)):
        parent = index.modules.get(name)
        if parent is not None and needs_sync(parent):
            record._modules.append((parent, type(parent), _simple_state(parent)))
            sync_module(parent)


@contextmanager
def trial(
    model: nn.Module, removals: Iterable[tuple[Group, np.ndarray]], index: ModelIndex | None = None
) -> Iterator[nn.Module]:
    """``with trial(model, [(group, atoms), ...]) as pruned: measure(pruned)``: the atoms
    are removed from ``model`` in place for the block, and on leaving it (an exception too)
    the model is restored exactly: the original tensor objects, module classes and attributes.

    ``index``: the model's ``ModelIndex``, to build once when trying many removals.
    """
    record = remove_atoms(model, removals, index)
    try:
        yield model
    finally:
        record.undo()


def _simple_state(module: nn.Module) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(module).items()
        if isinstance(v, (int, float, bool, str, tuple, type(None)))
    }
