"""The TensorRT backend: what it refuses everywhere, what it counts without a GPU, and (where
CUDA and TensorRT are both present) an engine timed with output parity and 2:4 layers."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from prunekit.errors import BackendError
from prunekit.measure.backends import BACKENDS, backend_class
from prunekit.measure.backends.tensorrt import TensorRTBackend, torch_dtype, two_four_layers
from prunekit.sparsity.masks import nm_mask

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _two_four(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        module.weight.mul_(nm_mask(module.weight, 2, 4, dim=1))
    return module


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 3 input channels: no groups of 4, stays dense
        nn.ReLU(),
        _two_four(nn.Conv2d(8, 16, 3, padding=1)),
        nn.ReLU(),
        nn.Flatten(),
        _two_four(nn.Linear(16 * 8 * 8, 32)),
        nn.ReLU(),
        nn.Linear(32, 10),  # dense
    )


def test_two_four_layers_counts_the_layers_a_sparse_engine_can_use() -> None:
    net = _net()
    assert two_four_layers(net) == 2
    # one extra non-zero in one group of 4 breaks the pattern of that layer
    with torch.no_grad():
        weight = net[5].weight
        group = weight[0, :4]
        group[group == 0] = 1.0
    assert two_four_layers(net) == 1
    # 2:4 groups run along the input dimension, not the output one: two of every four
    # output rows kept whole is 2:4 along the outputs and 4:4 or 0:4 along the inputs
    conv = nn.Conv2d(8, 8, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_((torch.arange(8) % 4 < 2).float().view(8, 1, 1, 1).expand(8, 8, 1, 1))
    assert two_four_layers(nn.Sequential(conv)) == 0
    with torch.no_grad():
        conv.weight.copy_(conv.weight.transpose(0, 1).clone())
    assert two_four_layers(nn.Sequential(conv)) == 1


def test_tensorrt_is_a_backend_that_needs_cuda() -> None:
    assert backend_class("tensorrt") is TensorRTBackend and "tensorrt" in BACKENDS
    assert TensorRTBackend.needs_cuda
    with pytest.raises(BackendError, match="runs on NVIDIA GPUs: use --device cuda"):
        TensorRTBackend(_net(), torch.device("cpu"), 1)


def test_engine_dtypes_map_to_torch() -> None:
    names = ("FLOAT", "HALF", "INT32", "INT8", "BOOL", "BF16", "INT64", "FP8")
    trt = SimpleNamespace(DataType=SimpleNamespace(**{n: n for n in names}))
    assert torch_dtype(trt, "HALF") is torch.float16
    assert torch_dtype(trt, "BF16") is torch.bfloat16
    assert torch_dtype(trt, "INT64") is torch.int64
    with pytest.raises(BackendError, match="no torch equivalent"):
        torch_dtype(trt, "FP8")


def test_bench_on_tensorrt_without_a_gpu_is_one_line(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = cli("bench", "resnet18", "--input-shape", "1,3,32,32", "--backend", "tensorrt",
                 "--device", "cpu")  # fmt: skip
    assert result.code == 1 and result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "tensorrt backend runs on NVIDIA GPUs" in lines[0], result.err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT (pip install tensorrt)")
def test_an_engine_is_built_checked_and_timed_on_the_gpu() -> None:
    from prunekit.inputs import TensorSpec
    from prunekit.measure.latency import TimingPolicy, measure_latency

    policy = TimingPolicy(warmup_calls=3, min_repeats=5, max_repeats=20, min_time_s=0.0)
    report = measure_latency(_net(), TensorSpec(((1, 3, 8, 8),)), [1, 4], backend="tensorrt",
                             device="cuda", policy=policy)  # fmt: skip
    info = report.backend_info
    assert info["two_four_layers"] == 2 and info["sparse_weights"] is True
    assert set(info["parity"]) == {"1", "4"}
    assert all(p["max_abs_diff"] <= p["tolerance"] for p in info["parity"].values())
    assert all(r.summary.median_ms > 0 for r in report.results)
