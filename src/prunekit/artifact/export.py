"""Models for deployment: ONNX, TorchScript or a prunekit artifact, checked before they are kept.

Every export is loaded back with the runtime that will run it (ONNX Runtime for ONNX,
``torch.jit.load`` for TorchScript, ``prunekit.artifact.load`` for an artifact) and its
outputs are compared with the PyTorch model's on seeded random inputs: at batch 1 and batch 3
when the batch is dynamic (the graph is exported at batch 2, so neither is the traced size),
at the static batch otherwise. Outputs agree when ``max|a - b| <= atol + rtol * max|eager|``
per output (``prunekit.measure.backends._base``); anything else raises ``BackendError`` and
nothing is kept.

ONNX and TorchScript exports are built in memory, checked, then written atomically
(``prunekit._outputs.write_file_atomic``); each carries a mark (ONNX metadata, a TorchScript
extra file) so that ``--force`` replaces only an export of the same format. An artifact is
checked in its staging directory, before it is moved into place.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._outputs import (
    Log,
    OutputDir,
    check_output_file,
    check_parent_writable,
    remove_debris,
)
from prunekit._utils import describe_exception
from prunekit._version import __version__
from prunekit.errors import BackendError, InputSpecError
from prunekit.inputs import ExampleInputs, InputSpec, flatten_tensors
from prunekit.measure.backends._base import ATOL, RTOL, check_parity, reference_tensors
from prunekit.measure.backends.ort import (
    eager_output,
    export_onnx,
    import_ort,
    input_names,
    ort_feeds,
    ort_session,
    quiet,
    tensor_names,
)

FORMATS = ("onnx", "torchscript", "safetensors")
MARK = "prunekit-export"  # ONNX metadata key; TorchScript extra file MARK + ".json"
EXPORT_BATCH = 2  # a dynamic batch is exported at 2: torch.export specialises a size of 1
PARITY_BATCHES = (1, 3)
ONNX_LIMIT = 2 << 30  # protobuf's limit on one file
REFUSAL = "the export was not kept"


@dataclass
class Exported:
    """An export built and checked in memory: the bytes to write, and what they are."""

    data: bytes
    info: dict[str, Any]


# ------------------------------------------------------------------------------ batches


def static_batch(spec: InputSpec) -> int:
    """The batch of the example inputs (``--input-shape``'s first number; 1 without one)."""
    data = spec.to_dict()
    shape = data["shapes"][0] if data.get("kind") == "tensor" else data.get("shape")
    return int(shape[0]) if shape else 1


def takes_lists(spec: InputSpec) -> bool:
    """The model takes a list of tensors (a torchvision detector), so its batch is the list's
    length, fixed in a traced graph."""
    return any(not isinstance(a, torch.Tensor) for a in spec.make(1).args)


def parity_batches(spec: InputSpec, dynamic_batch: bool) -> list[int]:
    return list(PARITY_BATCHES) if dynamic_batch else [static_batch(spec)]


# ------------------------------------------------------------------------------ the check


def check_export(
    model: nn.Module,
    run: Callable[[ExampleInputs], Any],
    spec: InputSpec,
    batches: list[int],
    runtime: str,
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> dict[str, Any]:
    """Run the exported model (``run``) and ``model`` on seeded inputs at each batch size;
    raise ``BackendError`` naming the output and the error when they disagree."""
    per_batch = {}
    notes = []
    for batch in batches:
        inputs = spec.make(batch)
        output = eager_output(model, inputs)
        reference = reference_tensors(output)
        names = tensor_names(output, "output")
        try:
            with quiet():
                outputs = flatten_tensors(run(inputs))
        except Exception as exc:
            hint = (
                " (the batch size may be fixed in the graph: try --static-batch)"
                if len(batches) > 1
                else ""
            )
            raise BackendError(
                f"{runtime} could not run the export at batch {batch}: {_run_error(exc)}"
                f"{hint}; {REFUSAL}"
            ) from None
        per_batch[str(batch)] = check_parity(
            reference, outputs, f"{runtime} at batch {batch},", atol=atol, rtol=rtol,
            names=names, refusal=REFUSAL,
        )  # fmt: skip
        scale = max((float(t.abs().max()) for t in reference if t.numel()), default=None)
        if scale is None:
            notes.append(
                f"every output at batch {batch} is empty (a detector that found nothing?): "
                "only their shapes were compared"
            )
        elif scale < atol:
            notes.append(
                f"every output at batch {batch} is below atol in magnitude (at most "
                f"{scale:.3g}): the check cannot tell them from zeros; lower --atol, or "
                "export with trained weights"
            )
    return {
        "runtime": runtime,
        "atol": atol,
        "rtol": rtol,
        "batch_sizes": batches,
        "max_abs_diff": max(p["max_abs_diff"] for p in per_batch.values()),
        "max_rel_diff": max(p["max_rel_diff"] for p in per_batch.values()),
        "batches": per_batch,
        "notes": notes,
    }


def _run_error(exc: BaseException) -> str:
    """A runtime's error in one line: ONNX Runtime spreads its message over lines; the
    TorchScript interpreter puts a traceback first and the error last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and "TorchScript interpreter" in lines[0]:
        text = lines[-1]  # "RuntimeError: ..."
    else:
        text = f"{type(exc).__name__}: {' '.join(lines) or '(no message)'}"
    return text if len(text) <= 300 else text[:297] + "..."


# ------------------------------------------------------------------------------ ONNX


def export_onnx_checked(
    model: nn.Module,
    spec: InputSpec,
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> Exported:
    """One ONNX file (weights inside, named inputs and outputs), checked in ONNX Runtime."""
    import onnx

    ort = import_ort()
    _check_onnx_size(model)
    inputs = spec.make(EXPORT_BATCH if dynamic_batch else static_batch(spec))
    names = (input_names(inputs), tensor_names(eager_output(model, inputs), "output"))
    with tempfile.TemporaryDirectory(prefix="prunekit-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        exporter = export_onnx(
            model, inputs, path, opset=opset, dynamic_batch=dynamic_batch, names=names
        )
        if len(list(Path(tmp).iterdir())) > 1:
            raise BackendError(
                "the ONNX exporter put this model's weights in a separate file (over 2 GB); "
                "prunekit export writes single-file ONNX only"
            )
        proto = onnx.load(str(path))
    proto.metadata_props.add(key=MARK, value=json.dumps({"prunekit_version": __version__}))
    data = proto.SerializeToString()
    session = ort_session(ort, data, ["CPUExecutionProvider"])

    def run(example: ExampleInputs) -> Any:
        return [torch.from_numpy(o) for o in session.run(None, ort_feeds(session, example))]

    parity = check_export(model, run, spec, parity_batches(spec, dynamic_batch),
                          f"ONNX Runtime {ort.__version__}", atol=atol, rtol=rtol)  # fmt: skip
    graph_inputs = [_onnx_value(v) for v in proto.graph.input]
    graph_outputs = [_onnx_value(v) for v in proto.graph.output]
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    info = {
        "format": "onnx",
        "exporter": exporter,
        "opset": opsets.get("ai.onnx"),
        **_io_info(graph_inputs, graph_outputs, dynamic_batch),
        "bytes": len(data),
        "parity": parity,
    }
    return Exported(data, info)


def _check_onnx_size(model: nn.Module) -> None:
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if size > ONNX_LIMIT:
        raise BackendError(
            f"the model's weights take {size / 1e9:.2f} GB, over the 2 GB limit of one ONNX "
            "file; prunekit export writes single-file ONNX only (use --format safetensors)"
        )


def _onnx_value(value: Any) -> dict[str, Any]:
    """Name, shape (a symbol for a free axis) and dtype of a graph input or output."""
    from onnx import helper

    tensor = value.type.tensor_type
    dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
            for d in tensor.shape.dim]  # fmt: skip
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "?"
    return {"name": value.name, "shape": dims, "dtype": dtype}


# ------------------------------------------------------------------------------ TorchScript


def export_torchscript_checked(
    model: nn.Module,
    spec: InputSpec,
    *,
    dynamic_batch: bool = True,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> Exported:
    """A traced (or scripted) module saved with its mark, loaded back with ``torch.jit.load``
    and checked (at batch 1 and 3 when the batch is dynamic: a trace that baked the batch
    size in fails there)."""
    inputs = spec.make(EXPORT_BATCH if dynamic_batch else static_batch(spec))
    exporter, scripted = _script(model, inputs)
    buffer = io.BytesIO()
    try:
        with quiet():
            torch.jit.save(scripted, buffer, _extra_files={MARK + ".json": _mark()})
            data = buffer.getvalue()
            loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:
        raise BackendError(
            f"the {exporter} module cannot be saved and loaded: {describe_exception(exc)}"
        ) from None

    def run(example: ExampleInputs) -> Any:
        with torch.no_grad():
            return example.call(loaded)

    batches = parity_batches(spec, dynamic_batch)
    parity = check_export(model, run, spec, batches, f"torch.jit.load (torch {torch.__version__})",
                          atol=atol, rtol=rtol)  # fmt: skip
    info = {
        "format": "torchscript",
        "exporter": exporter,
        "opset": None,
        **_traced_io(model, spec, batches, dynamic_batch),
        "bytes": len(data),
        "parity": parity,
    }
    return Exported(data, info)


def _script(model: nn.Module, inputs: ExampleInputs) -> tuple[str, Any]:
    """``torch.jit.trace`` on ``inputs``, or ``torch.jit.script`` where tracing cannot follow
    the model (outputs a trace cannot hold, such as a detector's list of dicts)."""
    errors = []
    with quiet(), torch.no_grad():
        try:
            return "torch.jit.trace", torch.jit.trace(
                model,
                example_inputs=inputs.args if inputs.args else None,
                example_kwarg_inputs=inputs.kwargs or None,
                strict=False,
                check_trace=False,
            )
        except Exception as exc:
            errors.append(f"torch.jit.trace: {describe_exception(exc)}")
        try:
            return "torch.jit.script", torch.jit.script(model)
        except Exception as exc:
            errors.append(f"torch.jit.script: {describe_exception(exc)}")
    raise BackendError("TorchScript export failed both ways: " + " | ".join(errors))


def _mark() -> str:
    return json.dumps({"format": MARK, "prunekit_version": __version__})


# ------------------------------------------------------------------------------ artifact


@dataclass(frozen=True)
class CheckedOutputDir(OutputDir):
    """An ``OutputDir`` that runs ``check(staging)`` after the writer: a failed check leaves
    the directory found at ``path`` (if any) as it was, and nothing beside it."""

    check: Callable[[Path], None] | None = None

    def write(self, writer: Callable[[Path], None], log: Log | None = None) -> Path:
        def checked(staging: Path) -> None:
            writer(staging)
            if self.check is not None:
                self.check(staging)

        return super().write(checked, log)


def checked_artifact_dir(
    out: OutputDir,
    model: nn.Module,
    spec: InputSpec,
    *,
    dynamic_batch: bool = True,
    trust_code: bool = False,
    atol: float = ATOL,
    rtol: float = RTOL,
    record: dict[str, Any],
) -> CheckedOutputDir:
    """``out``, where the artifact written is loaded back and checked before it is moved into
    place; ``record`` receives the summary."""
    from prunekit.artifact import load

    batches = parity_batches(spec, dynamic_batch)

    def check(staging: Path) -> None:
        reloaded, _ = load(staging, trust_code=trust_code, say=lambda _: None)

        def run(example: ExampleInputs) -> Any:
            with torch.inference_mode():
                return example.call(reloaded)

        parity = check_export(model, run, spec, batches, "prunekit.artifact.load",
                              atol=atol, rtol=rtol)  # fmt: skip
        record.update(
            format="safetensors",
            exporter="prunekit.artifact.save",
            opset=None,
            **_traced_io(model, spec, batches, dynamic_batch),
            bytes=sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()),
            parity=parity,
        )

    return CheckedOutputDir(out.path, out.command, out.option, check=check)


# ------------------------------------------------------------------------------ names, shapes


def _traced_io(
    model: nn.Module, spec: InputSpec, batches: list[int], dynamic_batch: bool
) -> dict[str, Any]:
    """Inputs and outputs described from the eager model at the checked batch sizes: an axis
    whose size follows the batch is ``batch`` when the batch is dynamic."""
    examples = [spec.make(b) for b in batches]
    raw = [eager_output(model, e) for e in examples]

    def describe(names: list[str], per_batch: list[list[torch.Tensor]]) -> list[dict[str, Any]]:
        described = []
        for i, name in enumerate(names):
            first = per_batch[0][i]
            shape: list[Any] = list(first.shape)
            if dynamic_batch and shape:
                sizes = {tuple(ts[i].shape[:1]) for ts in per_batch}
                if sizes == {(b,) for b in batches}:
                    shape[0] = "batch"
            described.append({"name": name, "shape": shape,
                              "dtype": str(first.dtype).removeprefix("torch.")})  # fmt: skip
        return described

    ins = describe(input_names(examples[0]), [e.tensors() for e in examples])
    outs = describe(tensor_names(raw[0], "output"), [flatten_tensors(r) for r in raw])
    return _io_info(ins, outs, dynamic_batch)


def _io_info(
    ins: list[dict[str, Any]], outs: list[dict[str, Any]], dynamic_batch: bool
) -> dict[str, Any]:
    axes = {
        v["name"]: {str(i): d for i, d in enumerate(v["shape"]) if isinstance(d, str)}
        for v in ins + outs
    }
    return {
        "dynamic_batch": dynamic_batch,
        "dynamic_axes": {k: v for k, v in axes.items() if v},
        "inputs": ins,
        "outputs": outs,
    }


# ------------------------------------------------------------------------------ outputs


def is_export_file(path: Path, fmt: str) -> bool:
    """``path`` is a ``fmt`` file that prunekit export wrote (its mark is in it)."""
    try:
        if fmt == "onnx":
            import onnx

            if path.stat().st_size > ONNX_LIMIT:
                return False
            proto = onnx.load(str(path), load_external_data=False)
            return any(p.key == MARK for p in proto.metadata_props)
        if fmt == "torchscript":
            with zipfile.ZipFile(path) as archive:
                return any(n.endswith(f"/extra/{MARK}.json") for n in archive.namelist())
    except Exception:
        return False
    return False


def check_export_file(
    out: str | Path, fmt: str, *, force: bool = False, log: Log | None = None
) -> Path:
    """``check_output_file`` for an export: with ``force``, an existing file is replaced only
    when it is an export of the same format that prunekit wrote."""
    path = Path(out).expanduser()
    if force and path.is_file() and not path.is_symlink() and is_export_file(path, fmt):
        check_parent_writable(path, "--out")
        if log is not None:
            remove_debris(path, log)
        return path
    return check_output_file(out, formats=(f"prunekit-{fmt}-export",), force=force, log=log)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InputSpecError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
