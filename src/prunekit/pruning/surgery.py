"""Apply a removal: slice every affected parameter and buffer, then sync module attributes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from prunekit.graph import Group
from prunekit.pruning._sync import sync_module
from prunekit.pruning._tensors import aliases, named_tensors, replace_tensor


@dataclass
class SurgeryRecord:
    shapes: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)  # name: (old, new)
    modules: list[str] = field(default_factory=list)


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


def remove_atoms(model: nn.Module, removals: Iterable[tuple[Group, np.ndarray]]) -> SurgeryRecord:
    """Physically remove atoms from ``model`` (in place) and return what changed."""
    removal = removal_indices(removals)
    tensors = named_tensors(model)
    holders = aliases(model)
    record = SurgeryRecord()
    touched: dict[int, nn.Module] = {}
    for owner, dims in removal.items():
        old = tensors[owner]
        new = old.detach()
        for dim, drop in dims.items():
            keep = np.setdiff1d(np.arange(old.shape[dim]), drop)
            new = new.index_select(dim, torch.as_tensor(keep, device=old.device))
        holder = holders[id(old)]
        replace_tensor(holder, old, new)
        record.shapes[owner] = (list(old.shape), list(new.shape))
        for module, _ in holder:
            touched[id(module)] = module
    names = {id(m): n for n, m in model.named_modules()}
    record.modules = sorted(names[i] for i in touched if i in names)
    # parents too, deepest first: an attention block whose projections changed may need a
    # class swap, a ViT its hidden size
    modules = dict(model.named_modules())
    for name in sorted(_ancestors(record.modules), key=lambda n: -n.count(".") - (1 if n else 0)):
        if name in modules:
            sync_module(modules[name])
    return record
