"""Magnitude importance of atoms, aggregated over their group.

For every slice an atom owns (a conv's output filter, the next layer's input column, a
BatchNorm scale...), the L1 norm sum(|w|) or L2 norm sqrt(sum(w^2)) of the weights in that
slice. Each (tensor, dimension) is normalised by its mean over the group's atoms, so that a
large layer does not drown a small one, and the normalised scores are summed per atom: the
"group magnitude" criterion of Fang et al., *DepGraph: Towards Any Structural Pruning*
(CVPR 2023). Buffers (BatchNorm running statistics) carry no importance.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from prunekit.graph import Group


def per_index_norm(t: torch.Tensor, dim: int, kind: str) -> np.ndarray:
    x = t.detach().float().movedim(dim, 0).reshape(t.shape[dim], -1)
    values = x.abs().sum(1) if kind == "l1" else x.pow(2).sum(1).sqrt()
    return values.cpu().numpy().astype(np.float64)


def atom_scores(group: Group, tensors: Mapping[str, torch.Tensor], kind: str = "l1") -> np.ndarray:
    """One score per atom of ``group`` (group-local order); higher means more important."""
    scores = np.zeros(group.size)
    for m in group.members:
        if m.is_buffer:
            continue
        per_atom = np.bincount(
            m.atom, weights=per_index_norm(tensors[m.owner], m.dim, kind), minlength=group.size
        )
        positive = per_atom[per_atom > 0]
        if positive.size:
            scores += per_atom / positive.mean()
    return scores
