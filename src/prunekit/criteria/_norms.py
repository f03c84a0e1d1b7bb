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


def per_index_norm(
    t: torch.Tensor, dim: int, kind: str, cache: dict[int, torch.Tensor] | None = None
) -> np.ndarray:
    """L1 (sum of |w|) or L2 norm of every slice of ``t`` along ``dim``.

    The cache keeps |w| (or w^2) summed over every dimension but the first two, since a weight
    is usually asked for its rows and then its columns: both come from that small matrix.
    """
    key = id(t)
    reduced = cache.get(key) if cache is not None else None
    if reduced is None:
        x = t.detach().float()
        x = x.abs() if kind == "l1" else x * x
        reduced = x.sum(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x
        if cache is not None:
            cache[key] = reduced
    if dim < reduced.dim():
        others = [d for d in range(reduced.dim()) if d != dim]
        values = reduced.sum(dim=others) if others else reduced
    else:  # a trailing dimension: recompute from the full tensor
        x = t.detach().float()
        x = x.abs() if kind == "l1" else x * x
        values = x.sum(dim=[d for d in range(t.dim()) if d != dim])
    if kind == "l2":
        values = values.sqrt()
    return values.cpu().numpy().astype(np.float64)


def atom_scores(
    group: Group,
    tensors: Mapping[str, torch.Tensor],
    kind: str = "l1",
    cache: dict[int, torch.Tensor] | None = None,
) -> np.ndarray:
    """One score per atom of ``group`` (group-local order); higher means more important.

    ``cache`` keeps each tensor's |w| (or w^2) across groups: a conv weight serves two.
    """
    scores = np.zeros(group.size)
    for m in group.members:
        if m.is_buffer:
            continue
        norms = per_index_norm(tensors[m.owner], m.dim, kind, cache)
        per_atom = np.bincount(m.atom, weights=norms, minlength=group.size)
        positive = per_atom[per_atom > 0]
        if positive.size:
            scores += per_atom / positive.mean()
    return scores
