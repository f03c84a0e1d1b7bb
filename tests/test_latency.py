"""Latency measurement: report structure, state restored, backend parity checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import BackendError, InputSpecError
from prunekit.inputs import ImageListSpec, TensorSpec
from prunekit.measure.backends import check_parity
from prunekit.measure.latency import TimingPolicy, measure_latency

FAST = TimingPolicy(warmup_calls=2, warmup_s=0, min_repeats=3, min_time_s=0, max_time_s=0.5)


def tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5)
    )


def _model() -> nn.Module:
    model = tiny()
    model(torch.randn(1, 3, 8, 8))  # materialise the lazy layer
    return model.train()


@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_report_per_batch_size(backend: str) -> None:
    model = _model()
    threads = torch.get_num_threads()
    report = measure_latency(
        model, TensorSpec(((1, 3, 8, 8),)), [1, 3], backend=backend, threads=1, policy=FAST
    )
    assert [r.summary.batch_size for r in report.results] == [1, 3]
    for r in report.results:
        s = r.summary
        assert len(r.samples_ms) == s.repeats >= 3
        assert s.min_ms <= s.p10_ms <= s.median_ms <= s.p90_ms <= s.max_ms
        assert s.throughput == pytest.approx(s.batch_size / (s.median_ms / 1000))
    assert report.threads == 1 and torch.get_num_threads() == threads
    assert model.training  # mode restored
    data = report.to_dict()
    assert {"backend", "device", "threads", "results"} <= set(data)
    assert {"batch_size", "median_ms", "p90_ms", "throughput"} <= set(data["results"][0])
    if backend == "onnxruntime":
        parity = data["backend_info"]["parity"]
        assert set(parity) == {"1", "3"} and parity["3"]["max_abs_diff"] <= parity["3"]["tolerance"]


def test_parity_check_rejects_a_different_computation() -> None:
    ref = [torch.ones(2, 3)]
    assert check_parity(ref, [torch.ones(2, 3) + 1e-6], "x")["max_abs_diff"] < 1e-5
    with pytest.raises(BackendError, match="differs from eager"):
        check_parity(ref, [torch.ones(2, 3) * 1.1], "x")
    with pytest.raises(BackendError, match="shape"):
        check_parity(ref, [torch.ones(3, 2)], "x")
    with pytest.raises(BackendError, match="outputs"):
        check_parity(ref, [], "x")
    with pytest.raises(BackendError, match="differs"):
        check_parity(ref, [torch.full((2, 3), float("nan"))], "x")


def test_onnxruntime_refuses_list_inputs() -> None:
    class TakesList(nn.Module):
        def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(images).sum()

    with pytest.raises(BackendError, match="list or dict"):
        measure_latency(
            TakesList(), ImageListSpec((3, 4, 4)), [1], backend="onnxruntime", policy=FAST
        )


def test_eager_takes_list_inputs() -> None:
    class TakesList(nn.Module):
        def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(images).sum()

    report = measure_latency(TakesList(), ImageListSpec((3, 4, 4)), [2], policy=FAST)
    assert report.results[0].summary.batch_size == 2


def test_bad_arguments() -> None:
    spec = TensorSpec(((1, 3, 8, 8),))
    with pytest.raises(BackendError, match="unknown backend"):
        measure_latency(_model(), spec, [1], backend="tensorrt-magic", policy=FAST)
    with pytest.raises(InputSpecError):
        measure_latency(_model(), spec, [], policy=FAST)
    with pytest.raises(InputSpecError):
        measure_latency(_model(), spec, [0], policy=FAST)
    with pytest.raises(InputSpecError):
        measure_latency(_model(), spec, [1], dtype="int3", policy=FAST)
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="CUDA"):
            measure_latency(_model(), spec, [1], device="cuda", policy=FAST)


class _SeesMemoryFormat(nn.Module):
    """Records, for every call, whether its input and its conv weight were channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nhwc = torch.channels_last
        self.seen.append(
            (
                x.is_contiguous(memory_format=nhwc),
                self.conv.weight.is_contiguous(memory_format=nhwc),
            )
        )
        return self.conv(x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_runs_model_and_inputs_in_nhwc_and_says_so(channels_last: bool) -> None:
    model = _SeesMemoryFormat()
    spec = TensorSpec(((1, 3, 8, 8),))
    report = measure_latency(model, spec, [2], channels_last=channels_last, policy=FAST)
    # a (2, 3, 8, 8) input and a (4, 3, 3, 3) weight are only channels-last when converted
    assert len(model.seen) >= FAST.min_repeats
    assert set(model.seen) == {(channels_last, channels_last)}
    suffix = " (channels_last)"
    assert report.inputs.endswith(suffix) == channels_last


@pytest.mark.slow
def test_compile_backend_checks_parity_and_reports_compile_time() -> None:
    report = measure_latency(
        _model(), TensorSpec(((1, 3, 8, 8),)), [2], backend="compile", policy=FAST
    )
    info = report.backend_info
    assert info["compile_s"]["2"] > 0
    assert info["parity"]["2"]["max_abs_diff"] <= info["parity"]["2"]["tolerance"]


def test_onnxruntime_thread_spinning_is_set_per_block_and_recorded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Sessions made inside ort_spinning(False) do not spin (prunekit pipeline runs several
    sessions one after another); outside, they keep ONNX Runtime's default; info says which."""
    pytest.importorskip("onnxruntime")
    from prunekit.inputs import ExampleInputs
    from prunekit.measure.backends.ort import (
        OnnxRuntimeBackend,
        export_onnx,
        import_ort,
        ort_session,
        ort_spinning,
    )

    model = torch.nn.Linear(4, 2).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, ExampleInputs((torch.randn(1, 4),), {}), path)
    ort = import_ort()

    def allowed() -> str:
        options = ort_session(ort, str(path), ["CPUExecutionProvider"], 1).get_session_options()
        return str(options.get_session_config_entry("session.intra_op.allow_spinning"))

    assert allowed() == "1"
    with ort_spinning(False):
        assert allowed() == "0"
        assert OnnxRuntimeBackend(model, torch.device("cpu"), 1).info["spinning"] is False
    assert allowed() == "1"
    assert OnnxRuntimeBackend(model, torch.device("cpu"), 1).info["spinning"] is True
