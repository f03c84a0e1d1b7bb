"""``prunekit analyze MODEL``: MACs, parameters and bytes, in total and per layer."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli._common import add_debug, add_model_arguments, load_from_args, print_json, say


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "analyze",
        help="count MACs, parameters and bytes, in total and per layer",
        description="Count MACs (1 MAC = 2 FLOPs), parameters and parameter bytes of a model, "
        "in total and per layer, for one forward pass on example inputs.",
    )
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--top", type=int, metavar="K", help="show only the K layers with the most MACs"
    )
    add_debug(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from prunekit.errors import InputSpecError, ModelForwardError
    from prunekit.measure.analysis import analyze

    if args.top is not None and args.top < 1:
        raise InputSpecError(f"--top must be a positive integer, got {args.top}")
    loaded = load_from_args(args)
    example = loaded.input_spec.make(1)
    try:
        result = analyze(loaded.model, example, name=loaded.name)
    except ModelForwardError as exc:
        raise ModelForwardError(
            f"{loaded.name}: {exc} (input: {loaded.input_note}); pass --input-shape with the "
            "shape the model expects"
        ) from exc
    sparse = sparse_layers(loaded.model)
    if args.json:
        data = {**result.to_dict(), "source": loaded.to_dict(), "input_note": loaded.input_note,
                "sparsity": sparse}  # fmt: skip
        print_json(data)
        return 0
    _print_human(result, loaded, args.top)
    if sparse["layers"]:
        _print_sparse(sparse)
    return 0


def sparse_layers(model: Any) -> dict[str, Any]:
    """The Linear / Conv layers holding at least 1% exact zeros: non-zeros, density, pattern
    (unstructured or N:M) and the bytes each storage format would take; with totals."""
    from prunekit.report.masks import layer_sparsity
    from prunekit.sparsity.storage import layer_storage, storage_totals

    modules = dict(model.named_modules())
    layers = [layer_storage(fact["name"], modules[fact["name"]].weight, fact["pattern"])
              for fact in layer_sparsity(model, min_sparsity=0.01)]  # fmt: skip
    return {
        "layers": layers,
        "params": sum(layer["params"] for layer in layers),
        "nonzeros": sum(layer["nonzeros"] for layer in layers),
        "storage": storage_totals(layers),
    }


def _print_sparse(sparse: dict[str, Any]) -> None:
    from prunekit.cli._format import nbytes, table

    rows = [
        [layer["name"], f"{layer['nonzeros']:,}/{layer['params']:,}", f"{layer['density']:.3f}",
         layer["pattern"], *(nbytes(layer["bytes"][f]) for f in ("dense", "bitmask", "csr"))]
        for layer in sparse["layers"]
    ]  # fmt: skip
    print()
    headers = ["sparse layer", "non-zeros", "density", "pattern", "dense", "bitmask", "csr"]
    print(table(headers, rows, right=[False, True, True, False, True, True, True]))
    s = sparse["storage"]
    density = sparse["nonzeros"] / sparse["params"] if sparse["params"] else 1.0
    print(f"sparse       {len(sparse['layers'])} layers, {sparse['nonzeros']:,} of "
          f"{sparse['params']:,} weights non-zero ({density:.1%}); stored dense "
          f"{nbytes(s['dense'])}, bitmask {nbytes(s['bitmask'])}, csr {nbytes(s['csr'])} "
          f"(smallest: {s['best']})")  # fmt: skip


def _print_human(result: Any, loaded: Any, top: int | None) -> None:
    from prunekit.cli._format import nbytes, si, table

    say(f"input: {result.inputs} ({loaded.input_note})")
    layers = result.layers
    if top is not None:
        layers = sorted(layers, key=lambda layer: layer.macs, reverse=True)[:top]
    rows = [
        [
            layer.name,
            layer.type,
            "x".join(map(str, layer.output_shape)) if layer.output_shape else "(not run)",
            si(layer.macs),
            f"{layer.params:,}",
            nbytes(layer.param_bytes),
            nbytes(layer.int8_bytes),
        ]
        for layer in layers
    ]
    dtype = "/".join(result.dtypes) or "no params"
    headers = ["layer", "type", "output", "MACs", "params", f"bytes ({dtype})", "bytes (int8)"]
    print(table(headers, rows, right=[False, False, False, True, True, True, True]))
    print()
    print(f"model        {loaded.name} ({loaded.source}, {loaded.task})")
    print(
        f"MACs         {si(result.macs)} per forward pass ({si(result.flops)}FLOPs; 1 MAC = 2 FLOPs)"
    )
    print(f"parameters   {result.params:,} ({result.trainable_params:,} trainable)")
    print(
        f"param bytes  {nbytes(result.param_bytes)} at {dtype}, {nbytes(result.int8_bytes)} at int8"
    )
    print(
        f"buffers      {nbytes(result.buffer_bytes)} (non-trainable state: BatchNorm statistics, position ids, ...)"
    )
