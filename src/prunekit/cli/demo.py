"""``prunekit demo``: the whole microcontroller path on built-in data, in about a minute.

Trains a 64-128-64-10 MLP on scikit-learn's handwritten digits (no download), compresses it into
a 6 KB flash budget, exports C, compiles it and checks it against the Python integer reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
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
        description=__doc__.strip().splitlines()[2],
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"output directory (default {DEFAULT_OUT}; a previous demo's output there is "
        "replaced, anything else is left alone unless --force)",
    )
    parser.add_argument(
        "--flash", default=DEMO_BUDGET, help=f"flash budget (default {DEMO_BUDGET})"
    )
    add_output_arguments(parser)
    parser.set_defaults(handler=run)


def _is_previous_demo(path: Path) -> bool:
    try:
        report = json.loads((path / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and report.get("demo") is True


def run(args: argparse.Namespace) -> int:
    from prunekit.mcu.compress import Recipe

    if args.out == DEFAULT_OUT and _is_previous_demo(Path(args.out)):
        args.force = True  # rerunning the README command must just work
    recipe = Recipe.quick()
    if args.no_distill:
        recipe = dataclasses.replace(recipe, distill_weight=0.0)
    report = compress_and_write(args, "digits", None, DEMO_ARCH, recipe)
    # Mark the output as the demo's own so a rerun may replace it.
    report_path = Path(args.out) / "report.json"
    report["demo"] = True
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print_json(report)
    else:
        print_summary(report, args.out)
    return 0
