"""Runtime backends that latency is measured on.

A backend turns (model, example inputs) into a zero-argument callable that performs one
inference, so the timing loop is the same for every runtime. Backends that run something
other than the eager model (an ONNX graph, a compiled graph) check that their outputs match
eager PyTorch before they are timed: a fast wrong answer is not a measurement.
"""

from __future__ import annotations

from prunekit.errors import BackendError
from prunekit.measure.backends._base import Backend, check_parity
from prunekit.measure.backends.compiled import CompileBackend
from prunekit.measure.backends.eager import EagerBackend
from prunekit.measure.backends.ort import OnnxRuntimeBackend
from prunekit.measure.backends.tensorrt import TensorRTBackend

BACKENDS: dict[str, type[Backend]] = {
    "eager": EagerBackend,
    "onnxruntime": OnnxRuntimeBackend,
    "compile": CompileBackend,
    "tensorrt": TensorRTBackend,
}


def backend_class(name: str) -> type[Backend]:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(
            f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}"
        ) from None


def check_backend_device(backend: str, device: object) -> None:
    """An unknown backend, or one that needs CUDA asked for on another device: one line,
    before any model is loaded."""
    if backend_class(backend).needs_cuda and not str(device).startswith("cuda"):
        raise BackendError(f"the {backend} backend runs on NVIDIA GPUs: use --device cuda")


__all__ = ["BACKENDS", "Backend", "backend_class", "check_backend_device", "check_parity"]
