"""Options shared by commands that take a model, and the code that turns them into one."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prunekit.models import LoadedModel

MODEL_HELP = (
    "a torchvision model name (mobilenet_v2, resnet50, ...), package.module:callable or "
    "path/to/file.py:callable returning an nn.Module, a Hugging Face model directory, or a "
    "prunekit artifact directory"
)

# the data specs of prunekit.data.specs, said without importing it (it needs torch)
DATA_HELP = (
    "mnist, fashion-mnist, digits, scenes, scenes-masks, an IDX directory, an ImageFolder "
    "directory, a segmentation folder (images/ + masks/) or a text file of sentences"
)


def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback when something fails"
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    group = parser.add_argument_group("model source")
    group.add_argument(
        "--input-shape",
        action="append",
        metavar="SHAPE",
        help="input shape with the batch dimension first, e.g. 1,3,224,224 (repeat for "
        "models with several inputs); default: the model's natural input",
    )
    group.add_argument(
        "--seq-len", type=int, metavar="N", help="sequence length for text models (default 128)"
    )
    group.add_argument(
        "--weights",
        metavar="NAME",
        help="torchvision weights to load, e.g. DEFAULT or IMAGENET1K_V2 (downloads once; "
        "default: random initialisation)",
    )
    group.add_argument(
        "--model-kwargs",
        metavar="JSON",
        help="keyword arguments for the model builder or callable, e.g. '{\"num_classes\": 10}'",
    )
    group.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a Hugging Face directory to run its own modeling code",
    )
    group.add_argument(
        "--trust-code",
        action="store_true",
        help="allow a prunekit artifact to run the code its recipe names (your own "
        "module:callable or file.py:callable); without it such an artifact is refused",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the random initialisation of a model built without weights (default 0)",
    )


def load_from_args(args: argparse.Namespace) -> LoadedModel:
    from prunekit.errors import InputSpecError
    from prunekit.inputs import parse_shape
    from prunekit.models import load_model

    shapes = [parse_shape(s) for s in args.input_shape] if args.input_shape else None
    kwargs: dict[str, Any] | None = None
    if args.model_kwargs:
        try:
            kwargs = json.loads(args.model_kwargs)
        except json.JSONDecodeError as exc:
            raise InputSpecError(f"--model-kwargs is not valid JSON: {exc}") from None
        if not isinstance(kwargs, dict):
            raise InputSpecError(
                "--model-kwargs must be a JSON object, e.g. '{\"num_classes\": 10}'"
            )
    if args.seq_len is not None and args.seq_len < 1:
        raise InputSpecError(f"--seq-len must be a positive integer, got {args.seq_len}")
    return load_model(
        args.model,
        weights=args.weights,
        input_shapes=shapes,
        seq_len=args.seq_len,
        model_kwargs=kwargs,
        trust_remote_code=args.trust_remote_code,
        trust_code=args.trust_code,
        seed=args.seed,
    )


def check_forward(loaded: LoadedModel) -> None:
    """One forward pass on the example inputs, a failure said as ``analyze`` says it (a
    wrong --input-shape is the user's to fix, not an internal error)."""
    import torch

    from prunekit._utils import describe_exception
    from prunekit.errors import ModelForwardError

    example = loaded.input_spec.make(1)
    try:
        with torch.no_grad():
            loaded.model.eval()(*example.args, **example.kwargs)
    except Exception as exc:
        raise ModelForwardError(
            f"{loaded.name}: the forward pass failed on inputs {example.describe()}: "
            f"{describe_exception(exc)} (input: {loaded.input_note}); pass --input-shape with "
            "the shape the model expects"
        ) from None


def check_out_is_not_model(out: str, model: str) -> None:
    """``--out`` may not be (or hold) the MODEL directory being read: ``--force`` replaces a
    previous output, never the input (a pruned artifact pruned into itself is lost)."""
    from prunekit.errors import OutputPathError

    source, target = Path(model).expanduser(), Path(out).expanduser()
    if not source.exists():
        return
    source, target = source.resolve(), target.resolve()
    if source == target or target in source.parents:
        raise OutputPathError(f"--out {out} is the model being read ({model}); write elsewhere")


def check_threads(threads: int | None) -> None:
    """``--threads``: positive; more than the machine's cores is allowed, with a note (the
    timings then measure oversubscription, not the model)."""
    import os

    from prunekit.errors import InputSpecError

    if threads is None:
        return
    if threads < 1:
        raise InputSpecError(f"--threads must be a positive integer, got {threads}")
    cores = os.cpu_count() or 1
    if threads > cores:
        say(f"note: --threads {threads} is more than this machine's {cores} logical CPUs; "
            "threads will share cores, which slows every timed call")  # fmt: skip


def say(message: str) -> None:
    """A diagnostic line: stderr, so that stdout stays clean for data."""
    print(message, file=sys.stderr, flush=True)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


# Calibration images are kept in memory (every sensitivity point runs on them): at most this many
# bytes of input tensors, whatever --samples asks for. 1 GiB is 1,783 images at 224x224.
MAX_CALIBRATION_BYTES = 1 << 30


@dataclass
class CalibrationData:
    """Input batches (and a labelled loader over the same images, or None for random inputs),
    with what they are, for the files that record how they were measured."""

    batches: list[Any]
    loader: Any
    source: dict[str, Any]


def image_batches(
    folder: str | None, loaded: Any, samples: int, batch_size: int, option: str
) -> CalibrationData:
    """``samples`` images of ``folder`` drawn at random (seed 0), or random inputs without it.

    Memory stays bounded whatever the folder holds: only the file list is read whole, and at
    most ``MAX_CALIBRATION_BYTES`` of images are loaded (fewer than ``samples`` then, said)."""
    import hashlib
    from pathlib import Path

    import torch

    from prunekit.errors import InputSpecError

    if samples < 1 or batch_size < 1:
        raise InputSpecError("--samples and --batch-size must be positive")
    if folder is None:
        say(f"no {option}: measuring on random inputs, a weak proxy; pass an image folder")
        # --samples inputs in batches of --batch-size (it was one batch: 64 asked, 32 used)
        one = sum(4 * t.numel() for t in loaded.input_spec.make(1).tensors())
        count = min(samples, max(1, MAX_CALIBRATION_BYTES // max(1, one)))
        batches = [loaded.input_spec.make(min(batch_size, count - start))
                   for start in range(0, count, batch_size)]  # fmt: skip
        return CalibrationData(batches, None, {"data": "random inputs", "samples": count})
    from prunekit.data.image_folder import image_folder_dataset

    shape = loaded.input_spec.make(1).tensors()[0].shape
    dataset = image_folder_dataset(folder, image_size=shape[-1], resize_size=shape[-1] * 8 // 7)
    per_image = 4 * int(torch.Size(shape[1:]).numel())
    fits = max(1, MAX_CALIBRATION_BYTES // per_image)
    wanted = min(samples, len(dataset))
    if wanted > fits:
        say(f"{option}: using {fits:,} of the {wanted:,} images asked for, drawn at random: "
            f"{MAX_CALIBRATION_BYTES >> 20} MiB of inputs is the most kept in memory")  # fmt: skip
        wanted = fits
    generator = torch.Generator().manual_seed(0)
    indices = torch.randperm(len(dataset), generator=generator)[:wanted].tolist()
    subset = torch.utils.data.Subset(dataset, indices)
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size)
    batches = [images for images, _ in loader]
    root = Path(folder).resolve()
    digest = hashlib.sha256()
    for i in indices:  # which files, and their sizes: a changed folder is another data set
        path = Path(dataset.samples[i][0]).resolve()
        digest.update(f"{path.relative_to(root)}:{path.stat().st_size}\n".encode())
    source = {"data": str(root), "samples": wanted, "images_sha256": digest.hexdigest()[:16]}
    return CalibrationData(batches, loader, source)
