"""ONNX Runtime: export the model to ONNX, check output parity, then time the session.

Each batch size is exported with static shapes, as a deployed model usually runs, with the
``torch.export``-based exporter; if that exporter cannot handle the model we fall back to the
TorchScript-based one and record which exporter produced the graph. Outputs are compared
with eager PyTorch before any timing.

On CUDA the session is fed numpy arrays, so each timed call includes the host<->device copies
of inputs and outputs (reported as ``includes_host_transfers``).

Thread spinning: after a run, ONNX Runtime's worker threads busy-wait for the next one, which
lowers one session's latency but, when several sessions run one after another (a perception
pipeline), each session's spinning threads take the cores from the next: measured here, three
128-px stages of about 1.5 ms each took 14.4 ms per frame with spinning and 7.1 ms without.
``ort_spinning(False)`` turns it off for the sessions made inside it (``prunekit pipeline``
does, for its tables and its frames); ``info["spinning"]`` records the setting.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._utils import describe_exception
from prunekit.errors import BackendError
from prunekit.inputs import ExampleInputs, flatten_tensors
from prunekit.measure.backends._base import Backend, check_parity, eager_reference

_SPINNING: contextvars.ContextVar[bool] = contextvars.ContextVar("ort_spinning", default=True)


@contextlib.contextmanager
def ort_spinning(enabled: bool) -> Iterator[None]:
    """Sessions made inside the block let their intra-op threads spin (True) or not."""
    token = _SPINNING.set(enabled)
    try:
        yield
    finally:
        _SPINNING.reset(token)


def spinning() -> bool:
    """Whether sessions made now let their threads spin."""
    return _SPINNING.get()


def import_ort() -> Any:
    """``onnxruntime``, once ``onnx`` and it are known to be installed."""
    try:
        import onnx  # noqa: F401 - the exporters write with it
        import onnxruntime
    except ImportError:
        raise BackendError(
            "ONNX export and ONNX Runtime need onnx and onnxruntime: pip install 'prunekit[onnx]'"
        ) from None
    return onnxruntime


def input_names(inputs: ExampleInputs) -> list[str]:
    """Names for the flattened input tensors: ``input`` (``input_0``, ``input_1``... for
    several positional tensors, ``input_0_1`` for the second tensor of a list), and the
    keyword of each keyword tensor."""
    names: list[str] = []
    single = len(inputs.args) == 1
    for i, arg in enumerate(inputs.args):
        names += tensor_names(arg, "input" if single else f"input_{i}")
    for key, value in inputs.kwargs.items():
        names += tensor_names(value, key)
    return names


def tensor_names(value: Any, prefix: str) -> list[str]:
    """A name for every tensor ``flatten_tensors(value)`` finds, in the same order: ``prefix``
    for a tensor, ``prefix_i`` inside sequences, the keys inside dicts (``prefix.key`` when
    nested)."""
    if isinstance(value, torch.Tensor):
        return [prefix]
    if isinstance(value, (tuple, list)):
        return [n for i, v in enumerate(value) for n in tensor_names(v, f"{prefix}_{i}")]
    if isinstance(value, dict) or hasattr(value, "items"):
        top = prefix in ("input", "output")
        return [
            n for k, v in value.items() for n in tensor_names(v, str(k) if top else f"{prefix}.{k}")
        ]
    return []


def _dynamic_shapes(inputs: ExampleInputs) -> Any:
    """``torch.export`` dynamic shapes: axis 0 of every input tensor is the batch."""
    batch = torch.export.Dim("batch")

    def spec(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            raise BackendError(
                "a dynamic batch needs the model to take tensors; this model takes a list or "
                "dict of tensors (e.g. a torchvision detector): export it with a static batch"
            )
        return {0: batch} if value.dim() else None

    if inputs.args and inputs.kwargs:
        raise BackendError(
            "a dynamic batch is supported for models called with positional tensors or with "
            "keyword tensors, not both: export it with a static batch"
        )
    if inputs.kwargs:
        return {k: spec(v) for k, v in inputs.kwargs.items()}
    return tuple(spec(a) for a in inputs.args)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Exporters and runtimes print progress on stdout, which is reserved for --json data,
    dump whole graphs on stderr when they fail, and warn: all of it is kept from the user."""
    sink = io.StringIO()
    with (
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


def _exporter_error(exc: BaseException) -> str:
    """The first line of the root cause (the exporters wrap it in pages of advice), without
    terminal colours, at most 300 characters."""
    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", describe_exception(root))
    return text if len(text) <= 300 else text[:297] + "..."


def export_onnx(
    model: nn.Module,
    inputs: ExampleInputs,
    path: Path,
    *,
    opset: int | None = None,
    dynamic_batch: bool = False,
    names: tuple[list[str], list[str]] | None = None,
) -> str:
    """Export ``model`` called on ``inputs`` to ``path``, one file with its weights inside
    (over 2 GB the exporter moves them to ``path.data``); returns the exporter that worked.

    ``opset``: the ONNX operator set (default: the exporter's). ``dynamic_batch``: axis 0
    of every input, and of every output that has the batch, stays symbolic (``batch``);
    ``inputs`` should then hold a batch of 2 or more, since ``torch.export`` specialises a
    size of 1. ``names``: (input names, output names) of the flattened tensors."""
    in_names, out_names = names if names is not None else (None, None)
    if dynamic_batch and names is None:
        in_names = input_names(inputs)
        out_names = tensor_names(eager_output(model, inputs), "output")
    errors = []
    for exporter, dynamo in (("torch.export", True), ("torchscript", False)):
        kwargs: dict[str, Any] = {
            "dynamo": dynamo,
            "opset_version": opset,
            "input_names": in_names,
            "output_names": out_names,
        }
        if dynamo:
            kwargs.update(verbose=False, external_data=False)
            if dynamic_batch:
                kwargs["dynamic_shapes"] = _dynamic_shapes(inputs)
        elif dynamic_batch:
            kwargs["dynamic_axes"] = _dynamic_axes(model, inputs, in_names, out_names)
        try:
            with quiet():
                torch.onnx.export(
                    model, inputs.args, str(path), kwargs=inputs.kwargs or None, **kwargs
                )
            return exporter
        except BackendError:
            raise
        except Exception as exc:
            errors.append(f"{exporter}: {_exporter_error(exc)}")
    raise BackendError("ONNX export failed with both exporters: " + " | ".join(errors))


def eager_output(model: nn.Module, inputs: ExampleInputs) -> Any:
    with torch.inference_mode():
        return inputs.call(model)


def _dynamic_axes(
    model: nn.Module, inputs: ExampleInputs, in_names: Any, out_names: Any
) -> dict[str, dict[int, str]]:
    """The TorchScript exporter's ``dynamic_axes``: axis 0 of the inputs, and of the outputs
    whose first axis is the batch."""
    _dynamic_shapes(inputs)  # the same refusals as the other exporter
    tensors = inputs.tensors()
    batch = tensors[0].shape[0] if tensors and tensors[0].dim() else None
    axes = {n: {0: "batch"} for n, t in zip(in_names, tensors, strict=False) if t.dim()}
    outputs = flatten_tensors(eager_output(model, inputs))
    for name, t in zip(out_names, outputs, strict=False):
        if t.dim() and t.shape[0] == batch:
            axes[name] = {0: "batch"}
    return axes


def check_tensor_inputs(inputs: ExampleInputs, backend: str) -> None:
    """Exported graphs take tensors: a model called with a list or dict is refused."""
    if any(isinstance(a, (list, tuple, dict)) for a in inputs.args):
        raise BackendError(
            f"the {backend} backend needs the model to take tensors; this model takes a list "
            "or dict of tensors (e.g. a torchvision detector); use --backend eager"
        )


def ort_session(
    ort: Any, model: str | bytes, providers: list[str], threads: int | None = None
) -> Any:
    """An ONNX Runtime session on a file or on the bytes of a model."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning() else "0")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=providers)


def ort_feeds(session: Any, inputs: ExampleInputs) -> dict[str, Any]:
    """The session's inputs from ``inputs``: keyword tensors by name, else in order."""
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


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    includes_host_transfers = True

    def __init__(self, model: nn.Module, device: torch.device, threads: int) -> None:
        super().__init__(model, device, threads)
        self.ort = import_ort()
        self._tmp = tempfile.TemporaryDirectory(prefix="prunekit-onnx-")
        self.info["onnxruntime_version"] = self.ort.__version__
        self.info["spinning"] = spinning()
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

    def runner(self, inputs: ExampleInputs, batch_size: int) -> Callable[[], Any]:
        check_tensor_inputs(inputs, self.name)
        path = Path(self._tmp.name) / f"model_b{batch_size}.onnx"
        self.info.setdefault("exporter", {})[str(batch_size)] = export_onnx(
            self.model, inputs, path
        )
        session = ort_session(self.ort, str(path), self.providers, self.threads)
        feeds = ort_feeds(session, inputs)
        reference = eager_reference(self.model, inputs)
        outputs = [torch.from_numpy(o) for o in session.run(None, feeds)]
        self.info.setdefault("parity", {})[str(batch_size)] = check_parity(
            reference, outputs, "ONNX Runtime"
        )

        def run() -> Any:
            return session.run(None, feeds)

        return run

    def close(self) -> None:
        self._tmp.cleanup()
