"""``prunekit sensitivity MODEL --out sens.json``: per-group drop vs pruning ratio."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli._common import (
    add_debug,
    add_model_arguments,
    image_batches,
    load_from_args,
    say,
)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "sensitivity",
        help="measure how much each prunable group can lose; write a resumable JSON file",
        description="For every prunable group and every ratio of the sweep, remove that "
        "group's least important channels alone, measure how much worse the model gets, and "
        "undo. The metric is the KL divergence of the outputs from the dense model's on "
        "calibration images (--data: an image folder; without it, random inputs, a much "
        "weaker proxy), or the top-1 accuracy lost on --data (--metric top1). The file is "
        "written after each group: run the same command again to resume an interrupted run.",
    )
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, metavar="FILE", help="sensitivity file (JSON)")
    parser.add_argument(
        "--ratios",
        default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
        metavar="LIST",
        help="fractions of each group's channels to remove (default 0.1,...,0.9)",
    )
    parser.add_argument("--metric", default="kl", choices=("kl", "top1"))
    parser.add_argument(
        "--data", metavar="DIR", help="image folder (one sub-directory per class) to measure on"
    )
    parser.add_argument(
        "--samples", type=int, default=64, metavar="N", help="images to measure on (default 64)"
    )
    parser.add_argument("--batch-size", type=int, default=32, metavar="N")
    parser.add_argument("--plot", metavar="PNG", help="also plot the curves to this PNG file")
    parser.add_argument("--force", action="store_true",
                        help="measure from the start, replacing a sensitivity file at --out "
                        "measured with other settings (default: resume it)")  # fmt: skip
    parser.add_argument("--no-blocks", dest="blocks", action="store_false",
                        help="do not measure dropping each residual block")  # fmt: skip
    add_debug(parser)
    parser.set_defaults(handler=run)


def _ratios(text: str) -> list[float]:
    from prunekit.errors import InputSpecError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputSpecError(f"--ratios {text!r}: expected numbers such as 0.25,0.5") from None
    if not values or any(not 0 < v < 1 for v in values):
        raise InputSpecError(f"--ratios {text!r}: every ratio must lie in (0, 1)")
    return values


def check_plot_path(plot: str | None) -> None:
    """``--plot`` names a PNG file prunekit may write (a previous plot of its own is replaced)."""
    from prunekit._outputs import check_output_file
    from prunekit.errors import OutputPathError

    if plot is None:
        return
    if not plot.lower().endswith(".png"):
        raise OutputPathError(f"--plot {plot}: the plot is a PNG image; give a name ending in .png")
    check_output_file(plot, option="--plot", formats=("png",), replace_own=True, log=say)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunekit._outputs import check_output_file
    from prunekit.errors import InputSpecError
    from prunekit.graph import trace_channels
    from prunekit.planning.sensitivity import FORMAT as SENSITIVITY_FORMAT
    from prunekit.planning.sensitivity import AccuracyDrop, OutputDivergence, analyze_sensitivity

    # every check that needs no model comes first: bad input fails in a second, writes nothing
    ratios = _ratios(args.ratios)
    out = check_output_file(args.out, formats=(SENSITIVITY_FORMAT,), replace_own=True, log=say)
    check_plot_path(args.plot)
    if args.data is None and args.metric == "top1":
        raise InputSpecError("--metric top1 needs labelled images: pass --data DIR")
    if args.data is not None and not Path(args.data).is_dir():
        raise InputSpecError(f"--data {args.data}: no such image folder")
    loaded = load_from_args(args)
    model = loaded.model.eval()
    example = loaded.input_spec.make(1)
    data = image_batches(args.data, loaded, args.samples, args.batch_size, "--data")
    metric = (
        AccuracyDrop(model, data.loader)
        if args.metric == "top1"
        else OutputDivergence(model, data.batches)
    )
    settings = {**loaded.provenance(), **data.source, "batch_size": args.batch_size}
    graph = trace_channels(model, example)
    sens = analyze_sensitivity(model, example, graph, metric, ratios=ratios, cache=out,
                               model_name=loaded.name, blocks=args.blocks,
                               block_batches=data.batches, settings=settings, fresh=args.force,
                               log=say)  # fmt: skip
    if args.plot:
        sens.plot(args.plot)
    print(f"{loaded.name}: {len(sens.groups)} groups x {len(ratios)} ratios, metric {sens.metric}")
    print(f"{'group':<36} {'size':>5}  drop at ratio " + " ".join(f"{r:>7.2f}" for r in ratios))
    for key, g in sens.groups.items():
        by_ratio = {round(p.ratio, 6): p.drop for p in g.points}
        cells = [by_ratio.get(round(r, 6)) for r in ratios]
        text = " ".join(f"{c:>7.3g}" if c is not None else f"{'-':>7}" for c in cells)
        print(f"{key:<36} {g.size:>5}  {'':13} {text}")
    for name, b in sens.blocks.items():
        print(f"block {name:<30} dropped: drop {b.drop:.3g}, MACs kept {b.macs_fraction:.1%}")
    print(f"wrote {out}" + (f" and {args.plot}" if args.plot else ""))
    return 0
