"""``prunekit run RECIPE.yaml --out RUN_DIR``: the whole job from one file."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli._common import add_debug, print_json, say

EXAMPLE = """\
model: prunekit.nn.mobile_cnn:MobileCNN   # any MODEL spec
input_shape: 1,1,28,28
data: fashion-mnist                       # a data spec
task: classification
target: macs=0.5                          # macs= | params= | bytes=
steps: [train, baseline, sensitivity, plan, prune, finetune, verify, evaluate]
train: {epochs: 3, lr: 0.05}
sensitivity: {samples: 64}
plan: {round_to: 8}
finetune: {epochs: 2, kd_temperature: 4}
verify: {backend: eager, batch_sizes: [1, 32], threads: 2}
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "run",
        help="run a whole recipe (baseline, sensitivity, plan, prune, finetune, verify, evaluate)",
        description="Run the steps of a YAML recipe, each into RUN_DIR/<step>/, and summarise "
        "in RUN_DIR/run.json (dense and final accuracy on the held-out split, retention, MACs, "
        "parameters, measured latency). A rerun skips steps whose inputs are unchanged and "
        "resumes an interrupted fine-tune. Example recipe:\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", metavar="RECIPE.yaml")
    parser.add_argument("--out", required=True, metavar="RUN_DIR")
    parser.add_argument("--json", action="store_true", help="print run.json on stdout")
    add_debug(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from prunekit.api.run import check_run_dir, load_recipe, run_recipe

    recipe = load_recipe(args.recipe)  # every check that needs no model first
    check_run_dir(args.out)
    summary = run_recipe(recipe, args.out, log=say, progress=True)
    if args.json:
        print_json(summary)
        return 0
    key = summary["metric"]
    dense, final = summary["dense"], summary["final"]

    def show(value: Any, fmt: str) -> str:
        return format(value, fmt) if value is not None else "-"

    print(f"{recipe.model} on {recipe.data}: {', '.join(recipe.steps)}")
    print(f"held-out {key}: dense {show(dense['accuracy'], '.4f')}, final "
          f"{show(final['accuracy'], '.4f')}, retention {show(summary['retention'], '.2%')} "
          f"({summary['data']['eval_samples']} samples, {summary['data']['split']['eval_from']})")  # fmt: skip
    if dense["macs"] and final["macs"]:
        print(f"MACs kept {final['macs'] / dense['macs']:.1%}, parameters kept "
              f"{final['params'] / dense['params']:.1%}")  # fmt: skip
    for row in summary["latency"]:
        print(f"batch {row['batch_size']:>3} ({row['backend']}): dense {row['dense_ms']:.3f} ms, "
              f"final {row['final_ms']:.3f} ms, {row['speedup']:.2f}x")  # fmt: skip
    print("seconds per step: " + ", ".join(f"{k} {v:.1f}" for k, v in summary["seconds"].items()))
    print(f"wrote {args.out}/run.json")
    return 0
