"""Latency measurement that can be trusted on a noisy machine.

For each batch size: prepare the backend (export / compile / parity check, untimed), warm up,
then time single calls until the median is known to within ``target_rel_ci`` (the half-width
of its distribution-free 95% interval, see ``_stats``), subject to a minimum number of calls
and time and a maximum time. On CUDA each call is timed with CUDA events around the call and
synchronised, so queued asynchronous work is never mistaken for a fast call.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit._checks import (
    check_callable,
    check_device,
    check_device_present,
    check_module,
    check_number,
    check_optional,
    check_sequence,
    check_type,
    got,
)
from prunekit.errors import BackendError, InputSpecError
from prunekit.inputs import (
    ExampleInputs,
    InputSpec,
    InputSpecTypeError,
    InputSpecValueError,
    TensorSpec,
    map_tensors,
)
from prunekit.measure._environment import environment
from prunekit.measure._stats import LatencySummary, summarize
from prunekit.measure.backends import backend_class

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``threads`` for the duration (None: unchanged)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class TimingPolicy:
    """When to stop warming up and measuring. Defaults suit models from 0.1 ms to seconds."""

    warmup_calls: int = 10  # at most; warm-up stops after 2 calls once warmup_s has passed
    warmup_s: float = 0.3
    min_repeats: int = 10
    min_time_s: float = 1.0
    max_repeats: int = 2000
    max_time_s: float = 20.0
    target_rel_ci: float = 0.02  # stop once the median's 95% CI half-width is within 2%

    def __post_init__(self) -> None:
        for name in ("warmup_s", "min_time_s", "max_time_s", "target_rel_ci"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputSpecError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise InputSpecError(f"{name} must be a finite number, got {value!r}")
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise InputSpecError("need 1 <= min_repeats <= max_repeats")
        if self.min_time_s < 0 or self.max_time_s < self.min_time_s:
            raise InputSpecError("need 0 <= min_time_s <= max_time_s")
        if self.warmup_s < 0 or self.warmup_calls < 0:
            raise InputSpecError("warm-up calls and seconds must be >= 0")
        if self.target_rel_ci <= 0:
            raise InputSpecError(
                f"the target CI (--target-ci) must be a positive fraction such as 0.02, got "
                f"{self.target_rel_ci}"
            )


@dataclass(frozen=True)
class BatchResult:
    summary: LatencySummary
    samples_ms: list[float]
    stable: bool  # the median's 95% CI half-width reached the policy's target

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self.summary)
        data["relative_ci95"] = self.summary.relative_ci
        data["stable"] = self.stable
        data["samples_ms"] = self.samples_ms
        return data


@dataclass(frozen=True)
class LatencyReport:
    backend: str
    device: str
    threads: int
    dtype: str
    inputs: str
    results: list[BatchResult]
    includes_host_transfers: bool
    backend_info: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "device": self.device,
            "threads": self.threads,
            "dtype": self.dtype,
            "inputs": self.inputs,
            "includes_host_transfers": self.includes_host_transfers,
            "results": [r.to_dict() for r in self.results],
            "backend_info": self.backend_info,
            "policy": self.policy,
            "environment": self.environment,
        }


def _cpu_timer(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000.0


def _cuda_timer(run: Callable[[], Any]) -> float:
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))


def timer_for(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """The call timer for ``device``: CUDA events on a GPU, the wall clock elsewhere."""
    return _cuda_timer if device.type == "cuda" else _cpu_timer


def time_calls(
    run: Callable[[], Any], timer: Callable[[Callable[[], Any]], float], policy: TimingPolicy
) -> tuple[list[float], bool]:
    """Warm up, then time calls of ``run``; returns (samples in ms, whether the CI target was met)."""
    start = time.perf_counter()
    for i in range(policy.warmup_calls):
        timer(run)
        if i >= 1 and time.perf_counter() - start >= policy.warmup_s:
            break
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        samples.append(timer(run))
        elapsed = time.perf_counter() - start
        if len(samples) < policy.min_repeats or elapsed < policy.min_time_s:
            continue
        stable = summarize(samples, 1).relative_ci <= policy.target_rel_ci
        if stable or len(samples) >= policy.max_repeats or elapsed >= policy.max_time_s:
            return samples, stable


def _channels_last(example: ExampleInputs) -> ExampleInputs:
    def convert(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t

    return ExampleInputs(map_tensors(example.args, convert), map_tensors(example.kwargs, convert))


def resolve_device(device: str | torch.device) -> torch.device:
    dev = check_device_present(device)
    if dev.type not in ("cpu", "cuda"):
        raise BackendError(f"unsupported device {str(device)!r}; use cpu or cuda")
    return dev


def _check_latency_arguments(
    model: Any,
    inputs: Any,
    batch_sizes: Any,
    backend: Any,
    dtype: Any,
    threads: Any,
    policy: Any,
    progress: Any,
) -> None:
    """``measure_latency``'s arguments, checked before anything runs."""
    check_module(model)
    if not isinstance(inputs, torch.Tensor) and not (
        callable(getattr(inputs, "make", None)) and callable(getattr(inputs, "describe", None))
    ):
        hint = (
            "; for a LoadedModel pass loaded.model and loaded.input_spec"
            if type(inputs).__name__ == "LoadedModel"
            else ""
        )
        raise InputSpecTypeError(
            "inputs must be an InputSpec, which builds inputs for every batch size (such as "
            "prunekit.inputs.TensorSpec(((1, 3, 224, 224),)) or LoadedModel.input_spec), or a "
            f"tensor whose shape (batch dimension first) becomes one; got {got(inputs)}{hint}"
        )
    check_sequence(
        batch_sizes,
        "batch_sizes",
        "a list of positive integers such as [1, 8]",
        error=InputSpecTypeError,
    )
    if len(batch_sizes) == 0:
        raise InputSpecValueError("give at least one batch size: batch_sizes=[1] for instance")
    for i, bs in enumerate(batch_sizes):
        check_number(
            bs,
            f"batch_sizes[{i}]",
            low=1,
            integer=True,
            type_error=InputSpecTypeError,
            value_error=InputSpecValueError,
        )
    check_type(
        backend, str, "backend", "a backend name such as 'eager', 'onnxruntime' or 'compile'"
    )
    if not isinstance(dtype, str):
        raise InputSpecTypeError(
            f"dtype must be the name of one ({', '.join(map(repr, DTYPES))}), got {got(dtype)}"
        )
    if threads is not None:
        check_number(
            threads,
            "threads",
            low=1,
            integer=True,
            type_error=InputSpecTypeError,
            value_error=InputSpecValueError,
        )
    check_optional(policy, TimingPolicy, "policy", "a prunekit.measure.latency.TimingPolicy")
    check_callable(progress, "progress", "a function taking one string", optional=True)


def measure_latency(
    model: nn.Module,
    inputs: InputSpec | torch.Tensor,
    batch_sizes: list[int] | tuple[int, ...] = (1,),
    *,
    backend: str = "eager",
    device: str | torch.device = "cpu",
    threads: int | None = None,
    dtype: str = "float32",
    policy: TimingPolicy | None = None,
    channels_last: bool = False,
    progress: Callable[[str], None] | None = None,
) -> LatencyReport:
    """Measure inference latency of ``model`` for each batch size on one backend and device.

    ``inputs`` is an ``InputSpec`` (or a tensor whose shape, batch dimension first, becomes
    one). The model is put in eval mode and moved to ``device`` (and ``dtype``); its previous
    train/eval mode is restored afterwards. ``channels_last`` converts the model and 4-D
    inputs to NHWC memory format, which CPU convolution kernels often run faster. ``threads`` sets the intra-op thread count of
    PyTorch (and ONNX Runtime) for the duration of the call (default: PyTorch's current one).
    """
    _check_latency_arguments(model, inputs, batch_sizes, backend, dtype, threads, policy, progress)
    check_device(device)
    spec: InputSpec = (
        TensorSpec((tuple(inputs.shape),)) if isinstance(inputs, torch.Tensor) else inputs
    )
    if dtype not in DTYPES:
        raise InputSpecError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    policy = policy or TimingPolicy()
    dev = resolve_device(device)
    torch_dtype = DTYPES[dtype]
    n_threads = threads or torch.get_num_threads()
    was_training = model.training
    backend_cls = backend_class(backend)
    timer = timer_for(dev)
    results = []
    model.eval()
    try:
        with intra_op_threads(n_threads):
            model.to(device=dev, dtype=torch_dtype)
            if channels_last:
                model.to(memory_format=torch.channels_last)
            runtime = backend_cls(model, dev, n_threads)
            try:
                for bs in batch_sizes:
                    example: ExampleInputs = spec.make(bs).to(dev, torch_dtype)
                    if channels_last:
                        example = _channels_last(example)
                    if progress:
                        progress(f"{backend} on {dev.type}: preparing batch size {bs}")
                    run = runtime.runner(example, bs)
                    samples, stable = time_calls(run, timer, policy)
                    results.append(BatchResult(summarize(samples, bs), samples, stable))
                    if progress:
                        s = results[-1].summary
                        progress(
                            f"  batch {bs}: median {s.median_ms:.3f} ms over {s.repeats} calls"
                        )
            finally:
                runtime.close()
    finally:
        model.train(was_training)
    return LatencyReport(
        backend=backend,
        device=str(dev),
        threads=n_threads,
        dtype=dtype,
        inputs=spec.describe() + (" (channels_last)" if channels_last else ""),
        results=results,
        includes_host_transfers=backend_cls.includes_host_transfers and dev.type == "cuda",
        backend_info=runtime.info,
        policy=asdict(policy),
        environment=environment(dev),
    )
