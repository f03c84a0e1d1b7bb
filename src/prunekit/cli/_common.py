"""Options shared by commands that take a model, and the code that turns them into one."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prunekit.models import LoadedModel

MODEL_HELP = (
    "a torchvision model name (mobilenet_v2, resnet50, ...), package.module:callable or "
    "path/to/file.py:callable returning an nn.Module, or a Hugging Face model directory"
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
    )


def say(message: str) -> None:
    """A diagnostic line: stderr, so that stdout stays clean for data."""
    print(message, file=sys.stderr, flush=True)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def image_batches(
    folder: str | None, loaded: Any, samples: int, batch_size: int, option: str
) -> tuple[list[Any], Any]:
    """(input batches, labelled loader or None): ``samples`` images of ``folder``, or random
    inputs without it."""
    import torch

    from prunekit.errors import InputSpecError

    if samples < 1 or batch_size < 1:
        raise InputSpecError("--samples and --batch-size must be positive")
    if folder is None:
        say(f"no {option}: measuring on random inputs, a weak proxy; pass an image folder")
        return [loaded.input_spec.make(min(samples, batch_size))], None
    from prunekit.data.image_folder import image_folder_dataset

    shape = loaded.input_spec.make(1).tensors()[0].shape
    dataset = image_folder_dataset(folder, image_size=shape[-1], resize_size=shape[-1] * 8 // 7)
    generator = torch.Generator().manual_seed(0)
    indices = torch.randperm(len(dataset), generator=generator)[:samples].tolist()
    subset = torch.utils.data.Subset(dataset, indices)
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size)
    batches = [images for images, _ in loader]
    return batches, loader
