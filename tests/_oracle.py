"""The dead-channel oracle of DESIGN.md, shared by the pruning tests.

1. Pick a set S of atoms in the coupled groups.
2. In a copy of the model, make S *dead*: zero every weight slice that reads S
   (the consumer-side slices the tracer recorded).
3. Physically removing S from another copy must reproduce the dead model's outputs.

Groups whose normalisation mixes the pruned channels cannot pass this exactly; they get
shape/finite/backward checks instead and are counted separately.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.graph import ChannelGraph, Group
from prunekit.inputs import as_example_inputs, doubled, flatten_tensors
from prunekit.pruning._tensors import named_tensors
from prunekit.pruning.importance import atom_scores
from prunekit.pruning.select import keep_count, plan_group
from prunekit.pruning.surgery import remove_atoms


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every parameter and float buffer so that no channel is trivially zero or equal
    (several torchvision heads are zero-initialised, which would make the oracle vacuous)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]:
            noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
            t.add_(noise * 0.05 * (t.abs().mean() + 0.05))
            if t.dim() == 1 and bool((t > 0).all()):  # keep variances positive
                t.abs_()
    return model


def choose(
    graph: ChannelGraph, model: nn.Module, fraction: float | None, exact_only: bool
) -> list[tuple[Group, np.ndarray]]:
    """One atom (fraction None) or ``fraction`` of every prunable group, least important first."""
    tensors = named_tensors(model)
    removals = []
    for group in graph.prunable:
        if exact_only and not group.exact:
            continue
        count = 1 if fraction is None else group.size - keep_count(group.size, fraction, 1)
        plan = plan_group(group, count, atom_scores(group, tensors))
        if len(plan.remove):
            removals.append((group, plan.remove))
    return removals


def dead_copy(model: nn.Module, removals: list[tuple[Group, np.ndarray]]) -> nn.Module:
    dead = copy.deepcopy(model)
    tensors = named_tensors(dead)
    with torch.no_grad():
        for group, atoms in removals:
            for member, idx in group.slices(atoms):
                idx = idx[member.consumer[idx]]
                if idx.size:
                    tensors[member.owner].index_fill_(member.dim, torch.as_tensor(idx), 0.0)
    return dead


def pruned_copy(model: nn.Module, removals: list[tuple[Group, np.ndarray]]) -> nn.Module:
    pruned = copy.deepcopy(model)
    remove_atoms(pruned, removals)
    return pruned


def outputs(model: nn.Module, example: Any) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.detach() for t in flatten_tensors(as_example_inputs(example).call(model.eval()))]


@dataclass
class OracleReport:
    exact_groups: int
    mixing_groups: int
    removed: int


def assert_exact(
    model: nn.Module, example: Any, graph: ChannelGraph, fraction: float | None
) -> OracleReport:
    removals = choose(graph, model, fraction, exact_only=True)
    expected = outputs(dead_copy(model, removals), example)
    got = outputs(pruned_copy(model, removals), example)
    assert len(got) == len(expected)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-9 * (1 + float(e.abs().max())))
    exact = sum(g.exact for g in graph.prunable)
    return OracleReport(exact, len(graph.prunable) - exact, sum(len(a) for _, a in removals))


def assert_runs_and_trains(model: nn.Module, example: Any, reference: list[torch.Tensor]) -> None:
    """Same output shapes as before pruning, finite values, and gradients that flow."""
    got = outputs(model, example)
    assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in reference]
    assert all(bool(torch.isfinite(t).all()) for t in got if t.is_floating_point())
    model.train()  # a batch of two: BatchNorm cannot train on a single sample
    batch = doubled(as_example_inputs(example))
    loss: Any = sum(
        (t.double() ** 2).mean()
        for t in flatten_tensors(batch.call(model))
        if t.is_floating_point()
    )
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None for g in grads)
    assert all(bool(torch.isfinite(g).all()) for g in grads if g is not None)
    model.zero_grad(set_to_none=True)
    model.eval()
