"""``prunekit demo``: the whole microcontroller path on built-in data, in about a minute.

Trains a 64-128-64-10 MLP on scikit-learn's handwritten digits (no download), compresses it into
a 6 KB flash budget, exports C, compiles it and checks it against the Python integer reference.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from prunekit.cli._common import print_json
from prunekit.cli.mcu import add_output_arguments, compress_and_write, print_summary

DEMO_ARCH = "64-128-64-10"
DEMO_BUDGET = "6KB"
DEFAULT_OUT = "prunekit-demo"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="offline demo: digits MLP -> 6 KB flash budget -> C code checked against Python",
        description=" ".join(__doc__.strip().split("\n\n")[1].split()),
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"output directory (default {DEFAULT_OUT}; a previous demo's output there is "
        "replaced; a directory holding anything else is refused, even with --force)",
    )
    parser.add_argument(
        "--flash", default=DEMO_BUDGET, help=f"flash budget (default {DEMO_BUDGET})"
    )
    add_output_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from prunekit.mcu.compress import Recipe

    recipe = Recipe.quick()
    if args.no_distill:
        recipe = dataclasses.replace(recipe, distill_weight=0.0)
    # Rerunning the README command must just work: the default directory is replaced when it
    # holds a previous demo's output and nothing else (prunekit._outputs), as with --force.
    report = compress_and_write(args, "digits", None, DEMO_ARCH, recipe, command="prunekit demo",
                                replace_own=args.out == DEFAULT_OUT)  # fmt: skip
    if args.json:
        print_json(report)
    else:
        print_summary(report, args.out)
    return 0
