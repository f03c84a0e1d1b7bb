"""ONNX Runtime: export the model to ONNX, check output parity, then time the session.

Each batch size is exported with static shapes, as a deployed model usually runs, with the
``torch.export``-based exporter; if that exporter cannot handle the model we fall back to the
TorchScript-based one and record which exporter produced the graph. Outputs are compared
with eager PyTorch before any timing.

On CUDA the session is fed numpy arrays, so each timed call includes the host<->device copies
of inputs and outputs (reported as ``includes_host_transfers``).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._utils import describe_exception
from prunekit.errors import BackendError
from prunekit.inputs import ExampleInputs
from prunekit.measure.backends._base import Backend, check_parity, eager_reference


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(
            "the onnxruntime backend needs onnx and onnxruntime: pip install 'prunekit[onnx]'"
        ) from None
    return onnxruntime


def export_onnx(model: nn.Module, inputs: ExampleInputs, path: Path) -> str:
    """Export ``model`` called on ``inputs`` to ``path``; returns the exporter that worked."""
    errors = []
    for exporter, dynamo in (("torch.export", True), ("torchscript", False)):
        kwargs: dict[str, Any] = {"dynamo": dynamo}
        if dynamo:
            kwargs["verbose"] = False
        try:
            # The exporters print progress on stdout, which is reserved for --json data.
            with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, inputs.args, str(path), kwargs=inputs.kwargs or None, **kwargs
                )
            return exporter
        except Exception as exc:
            errors.append(f"{exporter}: {describe_exception(exc)}")
    raise BackendError("ONNX export failed with both exporters: " + " | ".join(errors))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    includes_host_transfers = True

    def __init__(self, model: nn.Module, device: torch.device, threads: int) -> None:
        super().__init__(model, device, threads)
        self.ort = _import_ort()
        self._tmp = tempfile.TemporaryDirectory(prefix="prunekit-onnx-")
        self.info["onnxruntime_version"] = self.ort.__version__
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in self.ort.get_available_providers():
                raise BackendError(
                    "ONNX Runtime has no CUDAExecutionProvider here; install onnxruntime-gpu "
                    "or bench with --device cpu"
                )
            self.providers = ["CUDAExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self.info["providers"] = self.providers

    def _session(self, path: Path) -> Any:
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return self.ort.InferenceSession(str(path), options, providers=self.providers)

    def runner(self, inputs: ExampleInputs, batch_size: int) -> Callable[[], Any]:
        if any(isinstance(a, (list, tuple, dict)) for a in inputs.args):
            raise BackendError(
                "the onnxruntime backend needs the model to take tensors; this model takes "
                "a list or dict of tensors (e.g. a torchvision detector); use --backend eager"
            )
        path = Path(self._tmp.name) / f"model_b{batch_size}.onnx"
        self.info.setdefault("exporter", {})[str(batch_size)] = export_onnx(
            self.model, inputs, path
        )
        session = self._session(path)
        feeds = self._feeds(session, inputs)
        reference = eager_reference(self.model, inputs)
        outputs = [torch.from_numpy(o) for o in session.run(None, feeds)]
        self.info.setdefault("parity", {})[str(batch_size)] = check_parity(
            reference, outputs, "ONNX Runtime"
        )

        def run() -> Any:
            return session.run(None, feeds)

        return run

    @staticmethod
    def _feeds(session: Any, inputs: ExampleInputs) -> dict[str, Any]:
        names = [i.name for i in session.get_inputs()]
        by_name = {k: v for k, v in inputs.kwargs.items() if isinstance(v, torch.Tensor)}
        if set(names) <= set(by_name):
            return {n: by_name[n].detach().cpu().numpy() for n in names}
        tensors = inputs.tensors()
        if len(tensors) != len(names):
            raise BackendError(
                f"the exported ONNX graph takes {len(names)} inputs ({', '.join(names)}) but "
                f"the model was called with {len(tensors)} tensors"
            )
        return {n: t.detach().cpu().numpy() for n, t in zip(names, tensors, strict=True)}

    def close(self) -> None:
        self._tmp.cleanup()
