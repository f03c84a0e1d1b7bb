"""``prunekit export MODEL --format onnx|torchscript|safetensors --out FILE``: a model for
deployment, loaded back with its own runtime and checked against PyTorch before it is kept."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli._common import (
    add_debug,
    add_model_arguments,
    check_forward,
    load_from_args,
    print_json,
    say,
)

COMMAND = "prunekit export"
FORMATS = ("onnx", "torchscript", "safetensors")  # prunekit.artifact.export.FORMATS


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "export",
        help="write ONNX, TorchScript or safetensors, with an output-parity check",
        description="Export MODEL for deployment, load the export back with its own runtime "
        "(ONNX Runtime, torch.jit.load, prunekit's artifact loader) and compare its outputs "
        "with the PyTorch model's on seeded random inputs, at batch 1 and 3 with a dynamic "
        "batch, at the static batch otherwise. Outputs agree when max|export - eager| <= "
        "atol + rtol * max|eager| for every output; otherwise the command fails and keeps "
        "nothing. --out is a FILE for onnx and torchscript, a DIRECTORY for safetensors (a "
        "prunekit artifact: prunekit.json + model.safetensors, loadable as MODEL).",
    )
    add_model_arguments(parser)
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="onnx: one .onnx file with named inputs and outputs; torchscript: "
                        "a torch.jit.trace (or script) .pt file; safetensors: a prunekit artifact "
                        "directory")  # fmt: skip
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="the file to write (onnx, torchscript) or the artifact directory "
                        "(safetensors)")  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="replace PATH if it is a previous export of the same format")  # fmt: skip
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_const", const=True,
                       help="the batch axis stays free (default; checked at batch 1 and 3)")  # fmt: skip
    batch.add_argument("--static-batch", dest="dynamic_batch", action="store_const", const=False,
                       help="the batch of --input-shape (default 1) is fixed in the export "
                       "(the default for models that take a list of images, such as "
                       "torchvision detectors)")  # fmt: skip
    parser.add_argument("--opset", type=int, metavar="N",
                        help="ONNX operator set (default: the exporter's)")  # fmt: skip
    parser.add_argument("--atol", type=float, metavar="A",
                        help="absolute tolerance of the parity check (default 1e-4)")  # fmt: skip
    parser.add_argument("--rtol", type=float, metavar="R",
                        help="tolerance relative to each output's largest magnitude "
                        "(default 1e-3)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_debug(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import math

    import prunekit as pk
    from prunekit._outputs import check_output_dir, write_file_atomic
    from prunekit.artifact import export
    from prunekit.errors import InputSpecError

    # every check that needs no model comes first: bad input fails in a second, writes nothing
    export.check_format(args.format)
    atol = export.ATOL if args.atol is None else args.atol
    rtol = export.RTOL if args.rtol is None else args.rtol
    for option, value in (("--atol", atol), ("--rtol", rtol)):
        if not (math.isfinite(value) and value >= 0):
            raise InputSpecError(f"{option} must be a finite number >= 0, got {value}")
    if args.opset is not None:
        if args.format != "onnx":
            raise InputSpecError(f"--opset applies to --format onnx, not {args.format}")
        _check_opset(args.opset)
    if args.format == "safetensors":
        out_dir = check_output_dir(args.out, COMMAND, force=args.force, log=say)
        out = out_dir.path
    else:
        out = export.check_export_file(args.out, args.format, force=args.force, log=say)
    if args.format == "onnx":
        export.import_ort()  # a missing runtime fails before the model loads

    loaded = load_from_args(args)
    spec = loaded.input_spec
    check_forward(loaded)
    say(f"{loaded.name}: input {spec.describe()} ({loaded.input_note})")
    dynamic = args.dynamic_batch
    if args.format != "safetensors" and export.takes_lists(spec):
        if dynamic:
            raise InputSpecError(
                "--dynamic-batch: this model takes a list of images (a torchvision detector), "
                "whose length an exported graph fixes; use --static-batch"
            )
        if dynamic is None:
            say("this model takes a list of images, whose length an exported graph fixes: "
                "exporting a static batch of one image")  # fmt: skip
        dynamic = False
    dynamic = True if dynamic is None else dynamic
    options: dict[str, Any] = {"dynamic_batch": dynamic, "atol": atol, "rtol": rtol}
    model = loaded.model.eval()
    info: dict[str, Any]
    if args.format == "safetensors":
        info = {}
        # trust_code: the artifact names the code that built MODEL in this very process
        target = export.checked_artifact_dir(out_dir, model, spec, trust_code=True,
                                             record=info, **options)  # fmt: skip
        pk.save(model, target, source=loaded)
    else:
        if args.format == "onnx":
            exported = export.export_onnx_checked(model, spec, opset=args.opset, **options)
        else:
            exported = export.export_torchscript_checked(model, spec, **options)
        write_file_atomic(out, lambda f: f.write(exported.data), binary=True)
        info = exported.info
    record = {"model": loaded.name, "out": str(out), **info, "source": loaded.to_dict()}
    if args.json:
        print_json(record)
    else:
        _print_human(record)
    return 0


def _check_opset(opset: int) -> None:
    from prunekit.errors import InputSpecError

    try:
        import onnx

        newest = onnx.defs.onnx_opset_version()
    except ImportError:
        newest = None
    if opset < 7 or (newest is not None and opset > newest):
        raise InputSpecError(
            f"--opset {opset}: ONNX operator sets run from 7 to {newest or 'the newest'}"
        )


def _print_human(record: dict[str, Any]) -> None:
    from prunekit.cli._format import nbytes

    def tensors(values: list[dict[str, Any]]) -> str:
        return ", ".join(
            f"{v['name']} {v['dtype']}[{','.join(str(d) for d in v['shape'])}]" for v in values
        )

    opset = f", opset {record['opset']}" if record["opset"] is not None else ""
    print(f"{record['model']}: {record['format']} via {record['exporter']}{opset}, "
          f"{nbytes(record['bytes'])}")  # fmt: skip
    print(f"  inputs   {tensors(record['inputs'])}")
    print(f"  outputs  {tensors(record['outputs'])}")
    print(f"  batch    {'dynamic' if record['dynamic_batch'] else 'static'}")
    axes = [f"{name}[{axis}]={symbol}" for name, named in record["dynamic_axes"].items()
            for axis, symbol in named.items()]  # fmt: skip
    if axes:
        print(f"  free     {', '.join(axes)}")
    p = record["parity"]
    sizes = " and ".join(str(b) for b in p["batch_sizes"])
    print(f"  parity   {p['runtime']} at batch {sizes}: max abs error {p['max_abs_diff']:.3g}, "
          f"max rel error {p['max_rel_diff']:.3g} (tolerance atol {p['atol']:g} + rtol "
          f"{p['rtol']:g} x max|output|)")  # fmt: skip
    for note in p["notes"]:
        print(f"note: {note}")
    print(f"wrote {record['out']}")
