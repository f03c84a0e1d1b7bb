"""``prunekit evaluate MODEL --data SPEC``: the task metric on the held-out split."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli._common import (
    DATA_HELP,
    add_debug,
    add_model_arguments,
    load_from_args,
    print_json,
)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="measure top-1/top-5, mIoU/Dice or embedding fidelity on held-out data",
        description="Measure MODEL on the eval part of --data (the test split of a built-in "
        "or IDX dataset; a seeded held-out share of a folder or sentence file): top-1 / top-5 "
        "for classification, mIoU / Dice / pixel accuracy for segmentation, mean cosine and "
        "Spearman of pairwise similarities against --reference for sentence embeddings. The "
        "result names the split and how many samples it holds.",
    )
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, metavar="SPEC", help=DATA_HELP)
    parser.add_argument("--task", choices=("classification", "segmentation", "embedding"),
                        help="default: the data's task")  # fmt: skip
    parser.add_argument("--reference", metavar="MODEL",
                        help="a model to compare with (the dense model): its metric and the "
                        "retention; required for embedding fidelity")  # fmt: skip
    parser.add_argument("--split", default="eval", choices=("eval", "fit"),
                        help="eval (default): the held-out part; fit: the training part, to "
                        "look at fit only")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=256, metavar="N")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_debug(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from prunekit.api.evaluation import evaluate
    from prunekit.data.specs import parse_spec
    from prunekit.errors import InputSpecError
    from prunekit.models import load_model

    if args.batch_size < 1:
        raise InputSpecError(f"--batch-size must be a positive integer, got {args.batch_size}")
    parse_spec(args.data)  # a missing data set fails before the model loads
    loaded = load_from_args(args)
    reference = (
        load_model(args.reference, trust_code=args.trust_code, seed=args.seed)
        if args.reference
        else None
    )
    tokenizer = None
    task = args.task
    if loaded.source == "huggingface" or (loaded.source == "artifact" and task == "embedding"):
        tokenizer = load_tokenizer(args.model)
    result = evaluate(loaded.model, args.data, task=task,
                         example=loaded.input_spec.make(1),
                         reference=reference.model if reference else None, tokenizer=tokenizer,
                         split=args.split, batch_size=args.batch_size)  # fmt: skip
    result["model"] = loaded.name
    if args.json:
        print_json(result)
        return 0
    where = f"{result['data']['split']['eval_from']}" if args.split == "eval" else "the fit part"
    print(
        f"{loaded.name} on {args.data}, {args.split} split: {result['samples']} samples ({where})"
    )
    for key in ("top1", "top5", "loss", "miou", "dice", "pixel_accuracy", "mean_cosine",
                "spearman"):  # fmt: skip
        if key in result and result[key] is not None:
            print(f"  {key:<15} {result[key]:.4f}")
    if "reference" in result:
        for key, value in result["reference"].items():
            print(f"  reference {key:<5} {value:.4f}, retention {result['retention']:.2%}")
    return 0


def load_tokenizer(directory: str) -> Any:
    from prunekit.errors import ModelSourceError

    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(directory)
    except Exception as exc:  # OSError, ValueError: no tokenizer files
        raise ModelSourceError(
            f"{directory}: no tokenizer to encode the sentences with ({exc})"
        ) from None
