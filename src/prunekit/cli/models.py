"""``prunekit models``: the torchvision model names that prunekit can build by name."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli._common import add_debug, print_json

TASKS = (
    "classification",
    "detection",
    "segmentation",
    "video",
    "optical_flow",
    "quantized_classification",
)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "models",
        help="list the torchvision model names usable as MODEL",
        description="List the torchvision model names that every command accepts as MODEL.",
    )
    parser.add_argument("--task", choices=TASKS, help="only the models of this task")
    parser.add_argument("--json", action="store_true", help="print a JSON object on stdout")
    add_debug(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from prunekit.models.torchvision_source import models_by_task

    groups = models_by_task()
    if args.task:
        groups = {args.task: groups[args.task]}
    if args.json:
        print_json(groups)
        return 0
    for task, names in groups.items():
        print(f"{task} ({len(names)}):")
        for name in names:
            print(f"  {name}")
    return 0
