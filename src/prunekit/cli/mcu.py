"""``prunekit mcu``: train an MLP on MNIST-format data, fit it into a flash budget, export C."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from prunekit.cli._common import add_debug, print_json, say

DEFAULT_BUDGET = "1MB"


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace DIR if it exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--values",
        default="8,4,3",
        metavar="BITS",
        help="candidate value encodings, comma-separated: 8 = int8, fewer = shared values "
        "(weight sharing); the most accurate candidate that fits is kept (default 8,4,3)",
    )
    parser.add_argument(
        "--no-distill",
        action="store_true",
        help="fine-tune on the labels only, without distillation from the dense model",
    )
    parser.add_argument("--json", action="store_true", help="print report.json on stdout")
    add_debug(parser)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "mcu",
        help="fit an MLP into a microcontroller's flash budget and export C code",
        description="Train a fully-connected network, prune it gradually, share and quantise "
        "its weights to int8, pick the smallest storage per layer so it fits --flash, export "
        "integer-only C99 and check the compiled C against the Python integer reference. "
        "Writes DIR/report.json and the C files.",
    )
    parser.add_argument("--dataset", required=True, choices=("mnist", "fashion-mnist", "digits"))
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the four IDX files (train/t10k images/labels, .gz or not); without "
        "it MNIST is downloaded and Fashion-MNIST is read from Debian's dataset-fashion-mnist",
    )
    parser.add_argument("--arch", default=None, help="layer widths, default 784-300-100-10")
    parser.add_argument(
        "--flash",
        default=DEFAULT_BUDGET,
        help="flash budget for the model's constant data, e.g. 1MB, 20KB, 17000 (binary "
        "units: 1KB = 1024 bytes; default 1MB)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--quick", action="store_true", help="short training phases (for a first look)"
    )
    add_output_arguments(parser)
    parser.set_defaults(handler=run)


def parse_values(text: str) -> tuple[int, ...]:
    from prunekit.errors import DeploymentError

    try:
        bits = tuple(int(part) for part in text.split(","))
    except ValueError:
        bits = ()
    if not bits or any(not 1 <= b <= 8 for b in bits):
        raise DeploymentError(
            f"--values takes bit widths in 1..8 separated by commas, got {text!r}"
        )
    return bits


def compress_and_write(
    args: argparse.Namespace,
    dataset: str,
    data_dir: str | None,
    arch_text: str,
    recipe: Any,
    command: str = "prunekit mcu",
    replace_own: bool = False,
) -> dict[str, Any]:
    """The whole job, shared by ``mcu`` and ``demo``; returns the report."""
    from prunekit._outputs import check_output_dir
    from prunekit.errors import InputSpecError
    from prunekit.mcu.arch import check_fits_data, parse_arch
    from prunekit.mcu.budget import parse_bytes
    from prunekit.mcu.compress import (
        check_budget_feasible,
        compress_to_budget,
        dense_accuracy,
        train_dense,
    )
    from prunekit.mcu.datasets import load_splits
    from prunekit.mcu.deploy import dense_facts, write_deployment

    started = time.perf_counter()
    # Everything that can be wrong with the input is checked before minutes of training.
    if args.seed < 0:
        raise InputSpecError(f"--seed must be an integer >= 0, got {args.seed}")
    budget = parse_bytes(args.flash)
    widths = parse_arch(arch_text)
    value_bits = parse_values(args.values)
    out = check_output_dir(args.out, command, force=args.force, replace_own=replace_own)
    check_budget_feasible(widths, budget)
    data = load_splits(dataset, data_dir, seed=args.seed)
    check_fits_data(widths, data.features, data.classes, dataset)
    say(data.describe())
    dense = train_dense(widths, data, recipe, log=say)
    facts = dense_facts(dense, widths, dense_accuracy(dense, data))
    say(f"dense: {facts.bytes:,} bytes fp32, test accuracy {facts.accuracy:.2%}")
    compression = compress_to_budget(dense, data, budget, recipe, value_bits, log=say)
    report = write_deployment(
        out, compression, facts, data, args.flash,
        extra={"seconds_total": round(time.perf_counter() - started, 1),
               **({"demo": True} if command == "prunekit demo" else {})},
        log=say,
    )  # fmt: skip
    return report


def _dense_weights(arch: str) -> int:
    """The dense MLP's weights (its parameters less the biases) from its report's arch,
    ``64-16-10``: what the compressed side's non-zero weights are compared with."""
    import itertools

    return sum(a * b for a, b in itertools.pairwise(int(w) for w in arch.split("-")))


def print_summary(report: dict[str, Any], out: str) -> None:
    dense, comp = report["dense"], report["compressed"]
    rows = [
        ("test accuracy", f"{dense['accuracy']:.2%}", f"{comp['accuracy']:.2%}",
         f"{report['accuracy_delta_points']:+.2f} pts"),
        ("bytes", f"{dense['bytes']:,}", f"{comp['bytes']:,}",
         f"{report['compression_ratio']:.1f}x smaller"),
        ("weights", f"{_dense_weights(dense['arch']):,}", f"{comp['nonzeros']:,} non-zero",
         f"{comp['values']}"),
        ("layers", dense["arch"], "-".join(str(s[1]) for s in comp["shapes"][:1])
         + "".join(f"-{s[0]}" for s in comp["shapes"]), ""),
    ]  # fmt: skip
    print(f"{'':<14} {'dense fp32':>14} {'compressed':>20}  change")
    for name, before, after, change in rows:
        print(f"{name:<14} {before:>14} {after:>20}  {change}")
    budget = report["flash_budget"]
    print(f"flash budget {report['flash_budget_text']} = {budget:,} bytes: uses {comp['bytes']:,}")
    check = report["c_check"]
    if check["agreement"] is None:
        print(f"C check skipped: {check['reason']}")
    else:
        identical = "identical logits" if check["logits_identical"] else "logits differ"
        print(f"C check ({check['compiler']}): {check['agreement']:.2%} of {check['samples']:,} "
              f"test samples give the Python integer reference's class ({identical})")  # fmt: skip
        flash = report["flash"]
        print(f"compiled object: {flash['total']:,} bytes flash ({flash['code']:,} code), "
              f"{flash['ram']:,} bytes RAM (activation arena {flash['arena']:,})")  # fmt: skip
    print(f"wrote {out}/ ({', '.join(['report.json', *report['files']])})")


def run(args: argparse.Namespace) -> int:
    from prunekit.mcu.arch import LENET_300_100
    from prunekit.mcu.compress import Recipe

    arch = args.arch or (LENET_300_100 if args.dataset != "digits" else "64-128-64-10")
    recipe = Recipe.quick() if args.quick or args.dataset == "digits" else Recipe()
    if args.quick and args.dataset != "digits":
        recipe = Recipe(dense_epochs=8, prune_epochs=8, finetune_epochs=4, sharing_epochs=2)
    if args.no_distill:
        recipe = dataclasses.replace(recipe, distill_weight=0.0)
    report = compress_and_write(args, args.dataset, args.data_dir, arch, recipe)
    if args.json:
        print_json(report)
    else:
        print_summary(report, args.out)
    return 0
