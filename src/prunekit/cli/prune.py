"""``prunekit prune MODEL --ratio R | --target macs=F --out DIR``: physically remove channels."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli import prune_transformer
from prunekit.cli._common import (
    add_debug,
    add_model_arguments,
    check_out_is_not_model,
    check_threads,
    image_batches,
    load_from_args,
    print_json,
    say,
)


def register(sub: Any) -> None:
    from prunekit.criteria.registry import criterion_names  # names only: no torch

    parser = sub.add_parser(
        "prune",
        help="remove channels, neurons and attention heads; write a pruned artifact",
        description="Structured pruning: trace the model's coupled channel groups, remove the "
        "least important channels of each group (L1/L2 magnitude over the whole group), and "
        "write the smaller model as an artifact directory (prunekit.json + model.safetensors) "
        "with a prune.json record.",
    )
    add_model_arguments(parser)
    amount = parser.add_mutually_exclusive_group(required=True)
    prune_transformer.add_arguments(parser, amount)
    amount.add_argument(
        "--ratio",
        type=float,
        metavar="R",
        help="fraction of each group's channels to remove, in [0, 1)",
    )
    amount.add_argument(
        "--target",
        metavar="macs=F",
        help="keep this fraction of the MACs (e.g. macs=0.6), within 1%%",
    )
    amount.add_argument(
        "--plan",
        metavar="FILE",
        help="apply per-group channel counts from `prunekit plan` (made for this model)",
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave this module untouched: a module name (and its submodules) or a regular "
        "expression over module names; repeatable",
    )
    parser.add_argument(
        "--round-to",
        type=int,
        default=1,
        metavar="N",
        help="keep a multiple of N channels per group",
    )
    parser.add_argument("--importance", default="l1", choices=criterion_names(needs_data=False))
    parser.add_argument("--calibration", metavar="DIR",
                        help="with --plan: an image folder whose images set what each dropped "
                        "residual block adds in place of its branch (default: random inputs)")  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="artifact directory to write")
    parser.add_argument("--force", action="store_true",
                        help="replace DIR when it holds a previous `prunekit prune` output "
                        "and nothing else")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the prune.json record on stdout")
    verify = parser.add_argument_group("verify (after pruning)")
    verify.add_argument("--verify", action="store_true",
                        help="measure dense and pruned latency on --backend and report the "
                        "speedup next to the ideal dense/pruned MACs")  # fmt: skip
    verify.add_argument("--backend", default="eager", choices=("eager", "onnxruntime", "compile"))
    verify.add_argument("--batch-sizes", default="1,32", metavar="LIST")
    verify.add_argument("--threads", type=int, metavar="N")
    add_debug(parser)
    parser.set_defaults(handler=run)


def _parse_target(text: str) -> float:
    from prunekit.errors import InputSpecError

    key, _, value = text.partition("=")
    if key.strip() != "macs" or not value:
        raise InputSpecError(
            f"--target {text!r}: expected macs=F, e.g. macs=0.6 (other budgets come with `prunekit plan`)"
        )
    try:
        fraction = float(value)
    except ValueError:
        raise InputSpecError(f"--target {text!r}: {value!r} is not a number") from None
    if not 0 < fraction <= 1:
        raise InputSpecError(f"--target {text!r}: the fraction of MACs to keep must be in (0, 1]")
    return fraction


def run(args: argparse.Namespace) -> int:
    import copy
    from pathlib import Path

    import prunekit as pk
    from prunekit._outputs import check_output_dir
    from prunekit.errors import InputSpecError
    from prunekit.inputs import parse_int_list
    from prunekit.pruning import PruneConfigError
    from prunekit.pruning.config import as_patterns, check_pattern

    # every check that needs no model comes first: bad input fails in a second, writes nothing
    check_out_is_not_model(args.out, args.model)
    out = check_output_dir(args.out, "prunekit prune", force=args.force, log=say)
    check_threads(args.threads)
    for pattern in args.ignore:
        check_pattern(pattern, "--ignore")
    if args.calibration is not None and not Path(args.calibration).is_dir():
        raise InputSpecError(f"--calibration {args.calibration}: no such image folder")
    if prune_transformer.wants_transformer_path(args):
        return prune_transformer.run(args, out)
    target = _parse_target(args.target) if args.target else None
    if args.plan and args.ignore:
        raise PruneConfigError("--ignore does not apply to --plan (use plan --protect)")
    if args.plan and (args.round_to != 1 or args.importance != "l1"):
        raise PruneConfigError("--round-to and --importance do not apply to --plan: the plan "
                               "fixes every width (give them to prunekit plan)")  # fmt: skip
    if args.calibration is not None and not args.plan:
        raise PruneConfigError("--calibration sets what a plan's dropped residual blocks add; "
                               "it applies to --plan only")  # fmt: skip
    plan_config = pk.PlanPruning(plan=args.plan) if args.plan else None
    plan = plan_config.load() if plan_config is not None else None
    base = pk.StructuredPruning(ratio=args.ratio if args.ratio is not None else 0.0,
                                round_to=args.round_to, importance=args.importance)  # fmt: skip
    batch_sizes = parse_int_list(args.batch_sizes, "--batch-sizes") if args.verify else []
    loaded = load_from_args(args)
    model, example = loaded.model, loaded.input_spec.make(1)
    dense = copy.deepcopy(model) if args.verify else None
    names = {n for n, _ in model.named_modules() if n}
    ignore = as_patterns(args.ignore, names)
    config: Any
    calibration = None
    if plan is not None:
        config = pk.PlanPruning(plan=plan)
        if plan.drop_blocks:
            calibration = image_batches(args.calibration, loaded, 64, 32, "--calibration").batches
    elif target is not None:
        config = pk.TargetPruning(macs=target, round_to=args.round_to,
                                  importance=args.importance, ignore=ignore)  # fmt: skip
    else:
        config = pk.StructuredPruning(**{**base.to_dict(), "ignore": ignore})
    result: dict[str, Any] = {}
    pk.prune_(model, example, config, data=calibration, record=result)
    record = {
        "model": loaded.name,
        "source": loaded.to_dict(),
        **result,
        "target": {"macs": target, "probes": result["target"]["probes"]}
        if target is not None
        else None,
        "plan": {"file": str(args.plan), **result["plan"]} if plan is not None else None,
    }
    speedup = None
    if dense is not None:
        from prunekit.planning.verify import verify_speedup

        speedup = verify_speedup(dense, model, loaded.input_spec, batch_sizes,
                                 backend=args.backend, threads=args.threads)  # fmt: skip
        record["verify"] = speedup.to_dict()
    pk.save(model, out, source=loaded, extra_files={"prune.json": record})
    if args.json:
        print_json(record)
        return 0
    graph = record["graph"]
    print(f"{loaded.name}: {graph['prunable_groups']} prunable groups"
          + (f", {len(graph['unsupported'])} not prunable" if graph["unsupported"] else "")
          + f"; traced in {' and '.join(graph['modes'])} mode")  # fmt: skip
    if target is not None:
        applied = record["config"]
        print(
            f"ratio {applied['ratio']:.4f}{' with per-group adjustments' if applied['ratios'] else ''} keeps {record['kept']['macs']:.2%} of the MACs (target {target:.0%})"
        )
    _print_human(record, args.out)
    if speedup is not None:
        print(f"\nmeasured on {speedup.backend}, {speedup.threads} threads:")
        print(speedup.table())
        for finding in speedup.findings():
            print(f"note: {finding}")
    return 0


def _print_human(record: dict[str, Any], out: Any) -> None:
    from prunekit.cli._format import si, table

    b, a = record["before"], record["after"]
    rows = [
        [
            "MACs",
            si(b["macs"]),
            si(a["macs"]),
            f"{a['macs'] / b['macs']:.1%}" if b["macs"] else "-",
        ],
        ["parameters", f"{b['params']:,}", f"{a['params']:,}", f"{a['params'] / b['params']:.1%}"],
    ]
    print(table(["", "before", "after", "kept"], rows, right=[False, True, True, True]))
    groups = record["groups"]
    print(
        f"\npruned {len(groups)} groups ({sum(g['total'] - g['kept'] for g in groups):,} channels/heads removed)"
    )
    for name, why in record["skipped"].items():
        print(f"left unpruned: {name} ({why})")
    for note in record.get("notes", []):
        print(f"note: {note}")
    print(f"wrote {out}/ (prunekit.json, model.safetensors, prune.json)")
