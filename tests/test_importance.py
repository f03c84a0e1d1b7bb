"""Group magnitude importance against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.graph import trace_channels
from prunekit.pruning.importance import atom_scores, per_index_norm


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_per_index_norm_matches_the_formula(kind: str) -> None:
    w = torch.randn(6, 5, 3, 2, generator=torch.Generator().manual_seed(0))
    cache: dict[int, torch.Tensor] = {}
    for dim in range(4):
        others = [d for d in range(4) if d != dim]
        expected = w.abs().sum(others) if kind == "l1" else w.pow(2).sum(others).sqrt()
        np.testing.assert_allclose(per_index_norm(w, dim, kind, cache), expected.numpy(), rtol=1e-5)


def test_scores_sum_each_layer_normalised_by_its_mean() -> None:
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))  # rows: 2, 4, 6
        model[1].weight.copy_(torch.tensor([[6.0, 0.0, 3.0]]))  # columns: 6, 0, 3
    graph = trace_channels(model, torch.randn(1, 2))
    (group,) = graph.prunable
    tensors = dict(model.named_parameters())
    scores = atom_scores(group, tensors, "l1")
    # rows / mean(2, 4, 6) + columns / mean of the non-zero (6, 3)
    np.testing.assert_allclose(scores, [2 / 4 + 6 / 4.5, 4 / 4 + 0, 6 / 4 + 3 / 4.5])
