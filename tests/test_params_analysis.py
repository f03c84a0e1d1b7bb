"""Exact parameter/byte accounting and the per-layer analysis table."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from prunekit.measure.analysis import TOP_LEVEL, analyze
from prunekit.measure.params import count_params


def test_mobilenet_v2_parameters_exact() -> None:
    counts = count_params(torchvision.models.mobilenet_v2())
    assert counts.params == 3_504_872
    assert counts.param_bytes == 4 * 3_504_872
    assert counts.int8_bytes == 3_504_872
    assert counts.dtypes == ["float32"]
    # BatchNorm running mean/var (float32) and num_batches_tracked (int64) per BN layer
    bns = [m for m in torchvision.models.mobilenet_v2().modules() if isinstance(m, nn.BatchNorm2d)]
    assert counts.buffer_bytes == sum(2 * 4 * bn.num_features + 8 for bn in bns)


def test_tied_weights_counted_once_and_attributed_to_first_owner() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(100, 16)
            self.head = nn.Linear(16, 100, bias=False)
            self.head.weight = self.embed.weight

    counts = count_params(Tied())
    assert counts.params == 1600
    assert set(counts.by_module) == {"embed"}


def test_half_precision_bytes_and_frozen_params() -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 2)).half()
    model[0].weight.requires_grad_(False)
    counts = count_params(model)
    assert counts.params == 110 + 22
    assert counts.param_bytes == 2 * 132
    assert counts.trainable_params == 132 - 100
    assert counts.dtypes == ["float16"]


def test_analysis_rows_sum_to_totals_and_list_unused_modules() -> None:
    class WithAux(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(8))  # owned by the top-level module
            self.body = nn.Conv2d(3, 8, 3)
            self.aux = nn.Linear(8, 4)  # never called in forward

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x) * self.scale[:, None, None]

    result = analyze(WithAux(), torch.randn(1, 3, 10, 10))
    rows = {layer.name: layer for layer in result.layers}
    assert set(rows) == {"body", TOP_LEVEL, "aux"}
    assert rows["body"].macs == 8 * 8 * 8 * 3 * 9
    assert rows["body"].output_shape == [1, 8, 8, 8]
    assert rows["aux"].output_shape is None and rows["aux"].params == 36
    assert rows[TOP_LEVEL].params == 8
    assert sum(r.macs for r in result.layers) == result.macs
    assert sum(r.params for r in result.layers) == result.params == 8 + 224 + 36
    data = result.to_dict()
    assert data["flops"] == 2 * data["macs"]
    assert {"name", "type", "macs", "params"} <= set(data["layers"][0])


def test_inception_aux_head_is_listed_as_not_run_in_eval() -> None:
    model = torchvision.models.inception_v3(init_weights=False, aux_logits=True)
    result = analyze(model, torch.randn(1, 3, 299, 299))
    aux = [r for r in result.layers if r.name.startswith("AuxLogits")]
    assert aux and all(r.output_shape is None and r.macs == 0 for r in aux)
    assert result.params == 27_161_264
