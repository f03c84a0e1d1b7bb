"""TensorRT: export to ONNX, build an engine, check output parity, then time the engine.

The engine is built for the static shape of each batch size, from the same ONNX export the
onnxruntime backend times. Precision follows the model's dtype: float32 builds a strict
float32 engine (TF32 off, so parity with eager holds at the float32 tolerance), float16 and
bfloat16 enable those kernels. ``SPARSE_WEIGHTS`` is always set: TensorRT then considers its
2:4 sparse tensor-core tactics for every layer whose weights are 2:4 (Ampere or newer) and
keeps them only where they are faster, so a dense model builds as before. The layers that
are 2:4 are counted into ``info`` so a report can say what the engine could use.

Inputs and outputs stay on the GPU (torch tensors bound by address), so a timed call is the
engine alone. Written for the TensorRT 10 name-based tensor API (``set_tensor_address``,
``execute_async_v3``); on Jetson TensorRT comes with JetPack.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import BackendError
from prunekit.inputs import ExampleInputs
from prunekit.measure.backends._base import Backend, check_parity, eager_reference
from prunekit.measure.backends.ort import (
    check_tensor_inputs,
    eager_output,
    export_onnx,
    input_names,
    tensor_names,
)

# the model's dtype -> the builder flag that lets TensorRT use kernels of that precision
_PRECISION_FLAGS = {torch.float16: "FP16", torch.bfloat16: "BF16"}
# fp16/bf16 engines fuse and reorder in reduced precision: parity is checked at that scale
_REDUCED_RTOL = {torch.float16: 2e-2, torch.bfloat16: 5e-2}


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise BackendError(
            "the tensorrt backend needs TensorRT, which is not installed here (NVIDIA GPUs: "
            "pip install tensorrt; Jetson: it comes with JetPack)"
        ) from None
    return tensorrt


def torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT8: torch.int8,
        trt.DataType.BOOL: torch.bool,
    }
    for name, torch_type in (("BF16", torch.bfloat16), ("INT64", torch.int64)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = torch_type
    try:
        return table[dtype]
    except KeyError:
        raise BackendError(
            f"TensorRT engine tensor of type {dtype} has no torch equivalent"
        ) from None


def two_four_layers(model: nn.Module) -> int:
    """How many Linear/Conv weights hold exactly 2 non-zeros in every group of 4 along the
    input dimension: the layers a sparse engine can run on sparse tensor cores."""
    count = 0
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        # groups of 4 consecutive input channels (dim 1), as prunekit's nm_mask makes them
        weight = module.weight.detach().movedim(1, -1)
        if weight.shape[-1] % 4:
            continue
        groups = (weight.reshape(*weight.shape[:-1], -1, 4) != 0).sum(-1)
        count += bool((groups == 2).all())
    return count


class TensorRTBackend(Backend):
    name = "tensorrt"
    needs_cuda = True

    def __init__(self, model: nn.Module, device: torch.device, threads: int) -> None:
        super().__init__(model, device, threads)
        if device.type != "cuda":
            raise BackendError("the tensorrt backend runs on NVIDIA GPUs: use --device cuda")
        self.trt = import_tensorrt()
        self.logger = self.trt.Logger(self.trt.Logger.ERROR)
        self._tmp = tempfile.TemporaryDirectory(prefix="prunekit-trt-")
        self.dtype = next((p.dtype for p in model.parameters()), torch.float32)
        self.info.update(
            tensorrt_version=self.trt.__version__,
            precision=str(self.dtype).removeprefix("torch."),
            sparse_weights=True,
            two_four_layers=two_four_layers(model),
        )
        self._keep: list[Any] = []  # engines and contexts live as long as their runners

    def _engine(self, onnx_path: Path) -> Any:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(
                f"TensorRT cannot parse the ONNX export: {errors or 'no reason given'}"
            )
        config = builder.create_builder_config()
        config.clear_flag(trt.BuilderFlag.TF32)
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        flag = _PRECISION_FLAGS.get(self.dtype)
        if flag is not None:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError("TensorRT could not build an engine for this model")
        engine = trt.Runtime(self.logger).deserialize_cuda_engine(serialized)
        if engine is None:
            raise BackendError("TensorRT could not load the engine it built")
        return engine

    def runner(self, inputs: ExampleInputs, batch_size: int) -> Callable[[], Any]:
        check_tensor_inputs(inputs, self.name)
        trt = self.trt
        in_names = input_names(inputs)
        out_names = tensor_names(eager_output(self.model, inputs), "output")
        path = Path(self._tmp.name) / f"model_b{batch_size}.onnx"
        self.info.setdefault("exporter", {})[str(batch_size)] = export_onnx(
            self.model, inputs, path, names=(in_names, out_names)
        )
        engine = self._engine(path)
        context = engine.create_execution_context()
        bound: dict[str, torch.Tensor] = {}
        given = dict(zip(in_names, inputs.tensors(), strict=False))
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = torch_dtype(trt, engine.get_tensor_dtype(name))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                if name not in given:
                    raise BackendError(
                        f"the TensorRT engine takes an input {name!r} the model was not given"
                    )
                bound[name] = given[name].to(self.device, dtype).contiguous()
            else:
                shape = tuple(context.get_tensor_shape(name))
                bound[name] = torch.empty(shape, dtype=dtype, device=self.device)
            context.set_tensor_address(name, bound[name].data_ptr())
        outputs = [bound[n] for n in out_names if n in bound]
        if len(outputs) != len(out_names):
            missing = [n for n in out_names if n not in bound]
            raise BackendError(f"the TensorRT engine lacks outputs {missing}; refusing to time it")

        def run() -> list[torch.Tensor]:
            if not context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
                raise BackendError("TensorRT failed to run the engine")
            return outputs

        reference = eager_reference(self.model, inputs)
        run()
        torch.cuda.synchronize(self.device)
        rtol = _REDUCED_RTOL.get(self.dtype, 1e-3)
        self.info.setdefault("parity", {})[str(batch_size)] = check_parity(
            reference, [o.clone() for o in outputs], "TensorRT", rtol=rtol
        )
        self._keep.append((engine, context, bound))
        return run

    def close(self) -> None:
        self._keep.clear()
        self._tmp.cleanup()
