"""``prunekit plan MODEL --target macs=0.6 --sensitivity sens.json --out plan.json``."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli._common import add_debug, add_model_arguments, load_from_args, say


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "plan",
        help="choose per-group channel counts that meet a budget with the least predicted loss",
        description="Allocate pruning across groups from a sensitivity file (prunekit "
        "sensitivity) so that the model meets the target -- macs=F or params=F (fraction to "
        "keep), bytes=SIZE, or latency_ms=T with a latency table from `prunekit profile` run "
        "on the target device -- within 1%, with the least predicted metric loss. Apply it with "
        "`prunekit prune MODEL --plan FILE --out DIR`.",
    )
    add_model_arguments(parser)
    parser.add_argument("--target", required=True, metavar="KIND=VALUE")
    parser.add_argument("--sensitivity", required=True, metavar="FILE")
    parser.add_argument("--lut", metavar="FILE", help="latency table from `prunekit profile`")
    parser.add_argument("--round-to", type=int, default=1, metavar="N",
                        help="keep a multiple of N channels per group")  # fmt: skip
    parser.add_argument("--protect", action="append", default=[], metavar="PATTERN",
                        help="never prune groups produced by this module: a module name (and its "
                        "submodules) or a regular expression over module names; repeatable")  # fmt: skip
    parser.add_argument("--latency-weight", type=float, metavar="W",
                        help="with --lut and a macs/params/bytes target: how much the predicted "
                        "latency counts next to the predicted drop (default 1; 0 ignores it)")  # fmt: skip
    parser.add_argument("--no-blocks", dest="blocks", action="store_false",
                        help="never drop residual blocks, only channels")  # fmt: skip
    parser.add_argument("--out", required=True, metavar="FILE", help="plan file to write")
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    add_debug(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import math

    import prunekit as pk
    from prunekit._outputs import check_output_file
    from prunekit.errors import InputSpecError
    from prunekit.planning.lut import LatencyTable
    from prunekit.planning.planner import FORMAT as PLAN_FORMAT
    from prunekit.planning.planner import Target
    from prunekit.planning.sensitivity import Sensitivity
    from prunekit.pruning.config import check_pattern

    # every check that needs no model comes first: bad input fails in a second, writes nothing
    out = check_output_file(args.out, formats=(PLAN_FORMAT,), force=args.force, log=say)
    if args.round_to < 1:
        raise InputSpecError(f"--round-to must be a positive integer, got {args.round_to}")
    if args.latency_weight is not None and not (
        math.isfinite(args.latency_weight) and args.latency_weight >= 0
    ):
        raise InputSpecError(
            f"--latency-weight must be a finite number >= 0, got {args.latency_weight}"
        )
    for pattern in args.protect:
        check_pattern(pattern, "--protect")
    target = Target.parse(args.target)
    sensitivity = Sensitivity.load(args.sensitivity)
    lut = LatencyTable.load(args.lut) if args.lut else None
    loaded = load_from_args(args)
    weight = args.latency_weight
    if weight is None:
        weight = 1.0 if lut is not None and target.kind != "latency_ms" else 0.0
    config = pk.PlanConfig(round_to=args.round_to, protect=tuple(args.protect),
                           latency_weight=weight, blocks=args.blocks)  # fmt: skip
    plan = pk.plan(loaded.model.eval(), loaded.input_spec.make(1), target,
                   sensitivity=sensitivity, config=config, lut=lut, log=say,
                   option="--protect")  # fmt: skip
    plan.provenance = {**loaded.provenance(), "sensitivity": str(args.sensitivity),
                       "sensitivity_settings": sensitivity.settings,
                       "lut": str(args.lut) if args.lut else None}  # fmt: skip
    plan.save(out)
    a = plan.achieved
    print(f"{loaded.name}: plan for {target}")
    latency = (
        f", predicted latency {a['latency_ms']:.3g} ms (dense {a['dense_latency_ms']:.3g})"
        if "latency_ms" in a
        else ""
    )
    print(
        f"MACs kept {a['macs_fraction']:.2%}, parameters kept {a['params_fraction']:.2%}{latency}"
        f"; predicted drop {plan.predicted_drop:.4g} ({plan.metric})"
    )
    print(plan.table())
    for note in plan.notes:
        print(f"note: {note}")
    print(f"wrote {out}")
    return 0
