"""``prunekit sparsify MODEL (--sparsity S | --nm N:M) --out DIR``: zero individual weights.

Unstructured or N:M sparsity on the Linear / Conv layers of any model prunekit loads, one-shot
or along a gradual cubic ramp while fine-tuning with distillation from the dense model, with
per-layer sparsities chosen uniformly, by one global magnitude ranking, or from measured
per-layer sensitivity. Writes an artifact (dense ``model.safetensors`` that any loader reads,
``sparse.safetensors`` with the sparse tensors bit-packed) and ``sparsify.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prunekit.cli._common import (
    DATA_HELP,
    add_debug,
    add_model_arguments,
    check_out_is_not_model,
    load_from_args,
    print_json,
    say,
)

COMMAND = "prunekit sparsify"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "sparsify",
        help="unstructured or N:M (2:4) sparsity for any model, one-shot or gradual",
        description="Set individual weights of the Linear and Conv layers of MODEL to zero: "
        "--sparsity S (a fraction of the targeted weights) or --nm N:M (N kept of every M "
        "along the input dimension; 2:4 is what sparse tensor cores run). --schedule gradual "
        "raises sparsity along a cubic ramp while fine-tuning on the fit part of --data, "
        "distilling from the dense model; the metric is reported on the held-out eval part. "
        "Writes an artifact directory with sparsify.json.",
    )
    add_model_arguments(parser)
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--sparsity", type=float, metavar="S",
                        help="fraction of the targeted weights to set to zero, in (0, 1)")  # fmt: skip
    amount.add_argument("--nm", metavar="N:M",
                        help="keep N of every M consecutive weights along the input dimension, "
                        "e.g. 2:4 (layers whose input dimension M does not divide stay dense)")  # fmt: skip
    parser.add_argument("--schedule", default="oneshot", choices=("oneshot", "gradual"),
                        help="oneshot: prune at once (then fine-tune, with --epochs/--seconds); "
                        "gradual: prune along a cubic ramp while fine-tuning (default oneshot)")  # fmt: skip
    parser.add_argument("--allocation", default="global",
                        choices=("uniform", "global", "sensitivity"),
                        help="per-layer sparsity: the same everywhere, one global magnitude "
                        "ranking, or from measured per-layer sensitivity (default global)")  # fmt: skip
    parser.add_argument("--sensitivity", metavar="FILE",
                        help="per-layer sensitivity curves (JSON): read when complete, else "
                        "measured into it on a validation share of --data's fit part (resumable)")  # fmt: skip
    parser.add_argument("--floor", type=float, default=0.01, metavar="D",
                        help="every layer keeps at least this fraction of its weights (default 0.01)")  # fmt: skip
    parser.add_argument("--layers", action="append", default=[], metavar="PATTERN",
                        help="sparsify only layers matching (glob or module prefix; repeatable)")  # fmt: skip
    parser.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                        help="leave layers matching dense (glob or module prefix; repeatable)")  # fmt: skip
    parser.add_argument("--data", metavar="SPEC", help=DATA_HELP)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, metavar="N", help="epochs of fine-tuning")
    length.add_argument("--seconds", type=float, metavar="S",
                        help="fine-tune until the clock runs out")  # fmt: skip
    parser.add_argument("--ramp", type=float, default=0.75, metavar="F",
                        help="gradual: share of the training over which sparsity ramps up; the "
                        "rest fine-tunes at the final sparsity (default 0.75)")  # fmt: skip
    parser.add_argument("--lr", type=float, metavar="LR",
                        help="peak learning rate (default 0.01 with labels, SGD; 2e-4 "
                        "distilling a sentence encoder, AdamW)")  # fmt: skip
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    parser.add_argument("--batch-size", type=int, default=64, metavar="N")
    parser.add_argument("--kd-temperature", type=float, default=4.0, metavar="T")
    parser.add_argument("--kd-alpha", type=float, default=0.7, metavar="A",
                        help="weight of distillation from the dense model, in [0, 1] (default 0.7)")  # fmt: skip
    parser.add_argument("--device", metavar="DEVICE", help="train on this device (default: cpu)")
    parser.add_argument("--visualize", metavar="IMAGE",
                        help="write diagnosis pictures for this image (PNG/JPEG) into "
                        "DIR/diagnosis/: a layer's weight mask, its feature maps dense vs "
                        "sparse and, for segmentation, where the predicted boundary moved")  # fmt: skip
    parser.add_argument("--visualize-layer", metavar="LAYER",
                        help="the Conv / Linear layer to draw (default: the one pruned most)")  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="artifact directory to write")
    parser.add_argument("--force", action="store_true",
                        help="replace DIR when it holds a previous `prunekit sparsify` output")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print sparsify.json on stdout")
    add_debug(parser)
    parser.set_defaults(handler=run)


def parse_nm(text: str) -> tuple[int, int]:
    from prunekit.errors import InputSpecError

    parts = text.split(":")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        raise InputSpecError(f"--nm {text}: expected N:M, two integers such as 2:4") from None
    if not 0 < n < m:
        raise InputSpecError(f"--nm {text}: N must be at least 1 and smaller than M (e.g. 2:4)")
    return n, m


def _check_arguments(args: argparse.Namespace) -> None:
    from prunekit._checks import check_device_present
    from prunekit.errors import InputSpecError

    if args.sparsity is not None and not 0.0 < args.sparsity < 1.0:
        raise InputSpecError(
            f"--sparsity must be in (0, 1) (0.9 = 90% of the weights set to zero), got "
            f"{args.sparsity:g}"
        )
    trains = args.epochs is not None or args.seconds is not None
    if args.schedule == "gradual" and (args.data is None or not trains):
        raise InputSpecError(
            "--schedule gradual prunes while fine-tuning: give --data and --epochs or --seconds"
        )
    if trains and args.data is None:
        raise InputSpecError("--epochs/--seconds fine-tune on --data: give --data")
    if args.allocation == "sensitivity" and args.nm:
        raise InputSpecError("--allocation sensitivity chooses per-layer sparsities; --nm fixes "
                             "N of every M in every layer: use one or the other")  # fmt: skip
    if args.allocation != "sensitivity" and args.sensitivity:
        raise InputSpecError("--sensitivity FILE is used by --allocation sensitivity only")
    if args.device is not None:
        if not trains:
            raise InputSpecError("--device is where --epochs/--seconds fine-tune; without them "
                                 "sparsify trains nothing")  # fmt: skip
        check_device_present(args.device)
    if args.visualize is not None and not Path(args.visualize).is_file():
        raise InputSpecError(f"--visualize {args.visualize}: no such image file")
    if args.visualize_layer and not args.visualize:
        raise InputSpecError("--visualize-layer chooses the layer of --visualize IMAGE: give both")


def _visual_input(args: argparse.Namespace, model: Any, example: Any, data: Any) -> Any:
    """The ``--visualize`` image at the model's input size, refused before any pruning or
    training when the model takes no images or ``--visualize-layer`` names no weighted
    layer (a gradual run's hours are not spent to fail at the picture)."""
    from prunekit.errors import InputSpecError
    from prunekit.sparsity.diagnose import load_image, weighted_modules

    shape = example.tensors()[0].shape
    if len(shape) != 4:
        raise InputSpecError(f"--visualize draws image models; this one takes {list(shape)}")
    layer = args.visualize_layer
    if layer and layer.removesuffix(".weight") not in weighted_modules(model):
        raise InputSpecError(f"--visualize-layer {layer}: not a Conv or Linear module of this "
                             "model (prunekit analyze MODEL lists the layers)")  # fmt: skip
    # a segmentation folder's images are ImageNet-normalised; the built-in sets are in [0, 1]
    normal = data is not None and data.kind == "segmentation"
    imagenet = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)} if normal else {}
    try:
        image = load_image(args.visualize, (int(shape[2]), int(shape[3])), **imagenet)
    except (OSError, ValueError) as exc:
        raise InputSpecError(f"--visualize {args.visualize}: {exc}") from None
    return image.mean(dim=0, keepdim=True) if shape[1] == 1 else image


def _diagnosis(dense: Any, model: Any, args: argparse.Namespace, image: Any) -> dict[str, bytes]:
    """The ``--visualize`` pictures as ``diagnosis/NAME.png`` -> bytes (written into the
    artifact with everything else, atomically)."""
    import tempfile

    from prunekit.errors import InputSpecError
    from prunekit.sparsity.diagnose import write_diagnosis

    with tempfile.TemporaryDirectory() as tmp:
        try:
            paths = write_diagnosis(dense, {"sparse": model}, image, Path(tmp),
                                    layer=args.visualize_layer)  # fmt: skip
        except ValueError as exc:
            raise InputSpecError(f"--visualize-layer: {exc}") from None
        return {f"diagnosis/{p.name}": p.read_bytes() for p in paths}


def _weight(model: Any, layer: str) -> Any:
    import torch

    weight = model.get_submodule(layer).weight
    assert isinstance(weight, torch.Tensor)
    return weight


def run(args: argparse.Namespace) -> int:
    import copy

    import prunekit as pk
    from prunekit._outputs import check_output_dir
    from prunekit.api.sparsify import SparsifyConfig, sparsify_
    from prunekit.sparsity import storage

    _check_arguments(args)
    nm = parse_nm(args.nm) if args.nm else None
    config = SparsifyConfig(
        sparsity=args.sparsity, nm=nm, schedule=args.schedule, allocation=args.allocation,
        floor=args.floor, layers=tuple(args.layers), ignore=tuple(args.ignore),
        epochs=args.epochs, seconds=args.seconds, ramp=args.ramp, lr=args.lr,
        optimizer=args.optimizer, batch_size=args.batch_size, kd_temperature=args.kd_temperature,
        kd_alpha=args.kd_alpha, seed=args.seed, device=args.device,
    )  # fmt: skip
    check_out_is_not_model(args.out, args.model)
    out = check_output_dir(args.out, COMMAND, force=args.force, log=say)
    loaded = load_from_args(args)
    example = loaded.input_spec.make(1)
    data = pk.api.data.as_data(args.data, example=example, seed=args.seed) if args.data else None
    tokenizer = None
    if data is not None and data.task == "embedding" and Path(args.model).is_dir():
        from prunekit.cli.evaluate import load_tokenizer

        tokenizer = load_tokenizer(args.model)
    record: dict[str, Any] = {"model": loaded.name}
    image = _visual_input(args, loaded.model, example, data) if args.visualize else None
    dense = copy.deepcopy(loaded.model) if args.visualize else None
    sparsify_(loaded.model, config, data=data, sensitivity=args.sensitivity, example=example,
              model_name=loaded.name, record=record, log=say, tokenizer=tokenizer)  # fmt: skip
    model = loaded.model.cpu()
    pictures = {}
    if dense is not None:
        pictures = _diagnosis(dense.cpu().eval(), model, args, image)
        record["diagnosis"] = {"image": str(args.visualize), "files": sorted(pictures)}
    # through the module: a tied weight (an embedding shared with a decoder) has one name in
    # named_parameters(), maybe not the name of the layer it was sparsified as
    packed = storage.pack({f"{layer['name']}.weight": _weight(model, layer["name"])
                           for layer in record["layers"]})  # fmt: skip
    pk.save(model, out, source=loaded, extra_files={"sparsify.json": record},
            tensor_files={"sparse.safetensors": packed}, byte_files=pictures)  # fmt: skip
    if args.json:
        print_json(record)
        return 0
    _print_human(record, args.out)
    return 0


def _print_human(record: dict[str, Any], out: str) -> None:
    from prunekit.cli._format import nbytes, table

    rows = [
        [layer["name"], "x".join(map(str, layer["shape"])), f"{layer['density']:.3f}",
         layer["pattern"], nbytes(layer["bytes"]["dense"]), nbytes(layer["bytes"]["bitmask"]),
         nbytes(layer["bytes"]["csr"])]
        for layer in record["layers"]
    ]  # fmt: skip
    headers = ["layer", "shape", "density", "pattern", "dense", "bitmask", "csr"]
    print(table(headers, rows, right=[False, False, True, False, True, True, True]))
    print()
    kind = f"{record['nm'][0]}:{record['nm'][1]}" if record["nm"] else f"{record['target']:g}"
    print(f"sparsity     {record['sparsity']:.4f} of {record['targeted_weights']:,} targeted "
          f"weights (asked: {kind}; {record['schedule']}, allocation {record['allocation']})")  # fmt: skip
    if record["skipped"]:
        names = [s["name"] for s in record["skipped"]]
        more = f" and {len(names) - 6} more (sparsify.json: skipped)" if len(names) > 6 else ""
        print(f"left dense   {len(names)} layer(s): {', '.join(names[:6])}{more}")
    metric = record["metric"]
    if metric.get("final") is not None:
        print(f"{metric['name']:<12} {metric['dense']:.4f} dense -> {metric['final']:.4f} "
              f"(held-out {metric['split']} part of {metric['data']}, {metric['samples']} samples)")  # fmt: skip
    s = record["storage"]
    print(f"storage      dense {nbytes(s['dense'])}, bitmask {nbytes(s['bitmask'])}, "
          f"csr {nbytes(s['csr'])} (sparsified tensors; smallest: {s['best']})")  # fmt: skip
    if "diagnosis" in record:
        print(f"diagnosis    {', '.join(record['diagnosis']['files'])}")
    print(f"wrote {out}/ (prunekit.json, model.safetensors, sparse.safetensors, sparsify.json)")
