"""Behaviour of the channel tracer and the pruner on small hand-made models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from _oracle import assert_exact, randomize
from prunekit.graph import register_function_rule, trace_channels
from prunekit.pruning import PruneConfigError, StructuredPruning, prune, register_sync


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.a = conv_bn(8, 12)
        self.b = conv_bn(12, 8)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.b(self.a(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 4), 1))


X = torch.randn(1, 3, 8, 8)


def _sizes(model: nn.Module) -> list[int]:
    return sorted(g.size for g in trace_channels(model, X).prunable)


def test_residual_couples_stream_and_flatten_feeds_linear() -> None:
    graph = trace_channels(Residual(), X)
    sizes = {g.name: g.size for g in graph.prunable}
    assert sizes == {"stem.0": 8, "a.0": 12}  # the stream (stem + b + head input) and a's output
    stream = next(g for g in graph.prunable if g.name == "stem.0")
    head = next(m for m in stream.members if m.owner == "head.weight")
    assert head.dim == 1 and head.atom.tolist() == sorted(
        list(range(8)) * 16
    )  # 16 features per channel
    assert head.consumer.all()


def test_classifier_output_is_never_prunable() -> None:
    graph = trace_channels(Residual(), X)
    out = [
        g for g in graph.groups if any(m.owner == "head.weight" and m.dim == 0 for m in g.members)
    ]
    assert out and not out[0].prunable
    assert "model output" in out[0].blocked_reasons[0]


def test_unknown_operation_blocks_its_channels_and_is_reported_by_name() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv_bn(3, 8)
            self.out = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.cummax(self.conv(x), dim=2).values)

    graph = trace_channels(Odd(), X)
    assert not graph.prunable
    assert any("cummax in" in reason for reason in graph.unsupported)
    group = next(g for g in graph.groups if g.name == "conv.0")
    assert any("cummax" in r for r in group.blocked_reasons)


def test_user_rule_makes_an_operation_prunable() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv_bn(3, 8)
            self.out = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.logcumsumexp(self.conv(x), dim=2))

    assert not trace_channels(Odd(), X).prunable

    @register_function_rule("logcumsumexp")
    def along_spatial(ctx, args, kwargs, out):  # type: ignore[no-untyped-def]
        ctx.set(out, list(ctx.factors(args[0])))  # per channel, over a spatial dim

    try:
        assert [g.size for g in trace_channels(Odd(), X).prunable] == [8]
    finally:
        from prunekit.graph._registry import FUNCTION_RULES

        del FUNCTION_RULES["logcumsumexp"]


def test_tracing_leaves_model_and_mode_unchanged() -> None:
    model = Residual().train()
    before = copy.deepcopy(model.state_dict())
    trace_channels(model, X)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_depthwise_and_grouped_convolutions() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.expand = conv_bn(3, 16)
            self.dw = nn.Conv2d(16, 32, 3, padding=1, groups=16)  # channel multiplier 2
            self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
            self.proj = nn.Conv2d(32, 6, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(self.grouped(self.dw(self.expand(x))))

    model = randomize(Net()).double()
    example = X.double()
    graph = trace_channels(model, example)
    # the grouped conv removes the same offset from each of its 4 input groups; through the
    # depthwise conv (2 outputs per input) that ties expand channels j, j+4, j+8, j+12:
    # 4 atoms of 4 expand channels; its output side has 8 offsets per group
    assert sorted(g.size for g in graph.prunable) == [4, 8]
    assert_exact(model, example, graph, 0.5)
    prune(model, example, ratio=0.5)
    assert (model.dw.in_channels, model.dw.out_channels, model.dw.groups) == (8, 16, 8)
    assert (model.grouped.in_channels, model.grouped.out_channels, model.grouped.groups) == (
        16,
        16,
        4,
    )


def test_hard_coded_reshape_is_found_and_left_unpruned() -> None:
    class HardCoded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv_bn(3, 8)
            self.mid = conv_bn(8, 8)
            self.fc = nn.Linear(8 * 64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.mid(self.conv(x))
            return self.fc(x.reshape(1, 512))  # 512 written in the code

    model = HardCoded()
    result = prune(model, X, ratio=0.5)
    assert result.skipped and "mid.0" in result.skipped
    assert model.fc.in_features == 512  # the coupled layer was left alone
    assert model.conv[0].out_channels == 4  # an independent group was still pruned
    assert model(X).shape == (1, 4)


def test_ratio_overrides_ignore_round_to_and_floor() -> None:
    model = Residual()
    prune(model, X, StructuredPruning(ratio=0.5, ratios={"a.0": 0.25}, ignore=("stem",)))
    assert model.a[0].out_channels == 9  # 12 - floor(0.25 * 12)
    assert model.stem[0].out_channels == 8  # ignored: the stream keeps its width
    model = Residual()
    prune(model, X, StructuredPruning(ratio=0.5, round_to=8))
    assert model.a[0].out_channels == 8 and model.stem[0].out_channels == 8
    model = Residual()
    prune(model, X, StructuredPruning(ratio=0.99))
    assert model.a[0].out_channels == 1 and model.stem[0].out_channels == 1  # never zero


def test_regex_ratio_precedence() -> None:
    config = StructuredPruning(ratio=0.1, ratios={"re:a\\..*": 0.5, "a.0": 0.3})
    assert config.ratio_for(["a.0"]) == 0.3  # exact name wins over a regex
    assert config.ratio_for(["a.1"]) == 0.5
    assert config.ratio_for(["b.0"]) == 0.1
    assert StructuredPruning.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ratio": 1.0}, "ratio must be a number in \\[0, 1\\)"),
        ({"ratio": -0.1}, "ratio must be"),
        ({"ratios": {"a.0": 2}}, "ratios\\['a.0'\\]"),
        ({"round_to": 0}, "round_to"),
        ({"importance": "fisher"}, "unknown importance 'fisher'"),
        ({"ignore": ("re:(",)}, "invalid regex"),
    ],
)
def test_bad_settings(settings: dict, message: str) -> None:
    with pytest.raises(PruneConfigError, match=message):
        StructuredPruning(**settings)


def test_pattern_that_matches_nothing_names_closest_modules() -> None:
    with pytest.raises(PruneConfigError, match="matches no module; closest modules: stem"):
        prune(Residual(), X, ratio=0.5, ignore=("stm",))


def test_user_sync_for_a_custom_module() -> None:
    class Scale(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.n = n
            self.weight = nn.Parameter(torch.ones(n))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.weight.view(1, self.n, 1, 1)

    @register_sync(Scale)
    def _scale(m):  # type: ignore[no-untyped-def]
        m.n = m.weight.shape[0]

    model = nn.Sequential(conv_bn(3, 8), Scale(8), nn.Conv2d(8, 2, 1))
    prune(model, X, ratio=0.5)
    assert model[1].n == 4 and model(X).shape == (1, 2, 8, 8)
