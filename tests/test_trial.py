"""``trial``: remove channels for a ``with`` block, then put the model back exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import prunekit.pruning.surgery as surgery
from prunekit.graph import ChannelGraph, trace_channels
from prunekit.nn import PrunedMultiheadAttention
from prunekit.pruning.surgery import ModelIndex, remove_atoms, trial


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn(self.stem(x)))
        b = torch.relu(self.mid(self.conv(a) + a))
        return self.head(b.mean((2, 3)))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(x, x, x, need_weights=False)[0].mean(1))


CASES = {"residual": (Residual, (2, 3, 6, 6)), "attention": (Attention, (2, 5, 16))}


def _traced(kind: str) -> tuple[nn.Module, torch.Tensor, ChannelGraph]:
    torch.manual_seed(0)
    build, shape = CASES[kind]
    model = build().eval()
    with torch.no_grad():  # non-trivial running statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    x = torch.randn(*shape)
    return model, x, trace_channels(model, x)


def _half(graph: ChannelGraph) -> list[tuple[Any, np.ndarray]]:
    return [(g, np.arange(g.size // 2)) for g in graph.prunable if g.size > 1]


def _snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything trial may touch: tensor objects and values, module classes and attributes."""
    return {
        "tensors": {
            name: (id(t), t.detach().clone())
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        },
        "modules": {
            name: (type(m), {k: v for k, v in vars(m).items() if not k.startswith("_")})
            for name, m in model.named_modules()
        },
    }


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["tensors"].keys() == after["tensors"].keys()
    for name, (ident, value) in before["tensors"].items():
        assert after["tensors"][name][0] == ident, f"{name} is another tensor object"
        assert torch.equal(after["tensors"][name][1], value), f"{name} changed"
    assert before["modules"] == after["modules"]


@pytest.mark.parametrize("kind", list(CASES))
def test_the_block_sees_the_pruned_model_and_the_model_comes_back_bit_identical(
    kind: str,
) -> None:
    model, x, graph = _traced(kind)
    before, reference = _snapshot(model), model(x)
    widths = sum(p.numel() for p in model.parameters())
    with trial(model, _half(graph)) as pruned:
        assert pruned is model
        assert sum(p.numel() for p in pruned.parameters()) < widths
        assert pruned(x).shape == reference.shape
        if kind == "attention":
            assert isinstance(pruned.attn, PrunedMultiheadAttention)
            assert pruned.attn.num_heads == 2
    _assert_same(before, _snapshot(model))
    assert torch.equal(model(x), reference)


@pytest.mark.parametrize("kind", list(CASES))
def test_the_model_is_restored_when_the_block_raises(kind: str) -> None:
    model, _, graph = _traced(kind)
    before = _snapshot(model)
    index = ModelIndex.of(model)
    for _ in range(2):  # and the index stays valid for the next trial
        with pytest.raises(KeyboardInterrupt), trial(model, _half(graph), index):
            raise KeyboardInterrupt
        _assert_same(before, _snapshot(model))


def test_a_surgery_that_fails_halfway_leaves_the_model_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, _, graph = _traced("attention")
    before = _snapshot(model)

    def broken(module: nn.Module) -> None:
        raise RuntimeError("sync failed")

    monkeypatch.setattr(surgery, "sync_module", broken)  # after the tensors were sliced
    with pytest.raises(RuntimeError, match="sync failed"):
        remove_atoms(model, _half(graph))
    _assert_same(before, _snapshot(model))
