"""``prunekit profile MODEL --out lut.json``: a latency lookup table measured on this device."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli._common import add_debug, add_model_arguments, check_threads, load_from_args, say


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "profile",
        help="measure latency per group width on this device; write a lookup table",
        description="Run on the target device. Times the dense model, then each prunable group "
        "alone cut to each kept fraction of its channels (the least important by L1 "
        "magnitude; the surgery is undone after each point), and writes a JSON latency "
        "lookup table that a budget planner on another machine uses to predict the latency "
        "of a pruning plan (additively, interpolating between measured widths).",
    )
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, metavar="FILE", help="latency table to write")
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--backend", default="eager", choices=("eager", "onnxruntime", "compile", "tensorrt")
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="(default 1)")
    parser.add_argument(
        "--threads", type=int, metavar="N", help="intra-op threads (default: PyTorch's default)"
    )
    parser.add_argument(
        "--fractions",
        metavar="LIST",
        help="kept fractions of each group's channels, comma-separated (default "
        "1,0.75,0.5,0.25; with --quick 1,0.5)",
    )
    parser.add_argument(
        "--method",
        default="measure",
        choices=("measure", "modules"),
        help="measure: time the whole model at every point; modules: time each module of the "
        "dense model once and model every point from that (eager only; robust on a busy "
        "machine)",
    )
    parser.add_argument(
        "--round-to",
        type=int,
        default=1,
        metavar="N",
        help="kept channel counts are multiples of N (use the plan's --round-to)",
    )
    parser.add_argument(
        "--no-spinning",
        dest="spinning",
        action="store_false",
        help="onnxruntime: sessions whose threads do not busy-wait between runs, as in "
        "prunekit pipeline, which refuses a table timed with spinning threads",
    )
    parser.add_argument("--no-blocks", dest="blocks", action="store_false",
                        help="do not time the model with each residual block dropped")  # fmt: skip
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer points and shorter timing per point: a rough table in a fraction of the time",
    )
    timing = parser.add_argument_group("timing (per point)")
    timing.add_argument(
        "--min-time", type=float, metavar="S", help="time at least S seconds (0.5; --quick 0.1)"
    )
    timing.add_argument(
        "--max-time", type=float, metavar="S", help="stop after S seconds (5; --quick 1)"
    )
    add_debug(parser)
    parser.set_defaults(handler=run)


def _parse_fractions(text: str) -> list[float]:
    from prunekit.errors import InputSpecError
    from prunekit.planning.lut import check_fractions

    try:
        values = [float(p) for p in text.replace(" ", "").split(",") if p != ""]
    except ValueError:
        raise InputSpecError(
            f"cannot parse --fractions {text!r}: expected comma-separated numbers in (0, 1] "
            "such as 1,0.75,0.5,0.25"
        ) from None
    try:
        return check_fractions(values)
    except InputSpecError as exc:
        raise InputSpecError(f"--fractions {text!r}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import math

    from prunekit._outputs import check_output_file
    from prunekit.errors import InputSpecError
    from prunekit.graph import trace_channels
    from prunekit.measure.backends import check_backend_device
    from prunekit.measure.backends.ort import ort_spinning
    from prunekit.measure.latency import resolve_device
    from prunekit.planning.lut import (
        DEFAULT_FRACTIONS,
        DEFAULT_POLICY,
        FORMAT,
        QUICK_FRACTIONS,
        QUICK_POLICY,
        profile_latency,
    )

    # every check that needs no model comes first: bad input fails in a second, writes nothing
    check_backend_device(args.backend, args.device)
    out = check_output_file(args.out, formats=(FORMAT,), force=args.force, log=say)
    if args.round_to < 1:
        raise InputSpecError(f"--round-to must be a positive integer, got {args.round_to}")
    if args.batch_size < 1:
        raise InputSpecError(f"--batch-size must be a positive integer, got {args.batch_size}")
    check_threads(args.threads)
    if not args.spinning and args.backend != "onnxruntime":
        raise InputSpecError(
            f"--no-spinning is an ONNX Runtime setting; --backend {args.backend} has no spinning "
            "threads to turn off (drop the flag, or use --backend onnxruntime)"
        )
    if args.fractions is not None:
        fractions = _parse_fractions(args.fractions)
    else:
        fractions = list(QUICK_FRACTIONS if args.quick else DEFAULT_FRACTIONS)
    policy = QUICK_POLICY if args.quick else DEFAULT_POLICY
    min_time = policy.min_time_s if args.min_time is None else args.min_time
    max_time = policy.max_time_s if args.max_time is None else args.max_time
    if not (math.isfinite(min_time) and math.isfinite(max_time)) or min_time < 0 or max_time <= 0:
        raise InputSpecError("--min-time must be >= 0 and --max-time > 0 seconds")
    policy = dataclasses.replace(policy, min_time_s=min_time, max_time_s=max(min_time, max_time))
    resolve_device(args.device)

    loaded = load_from_args(args)
    say(f"{loaded.name}: input {loaded.input_spec.describe()} ({loaded.input_note})")
    graph = trace_channels(loaded.model, loaded.input_spec.make(1))
    with ort_spinning(args.spinning):
        table = profile_latency(
            loaded.model, loaded.input_spec, graph, backend=args.backend, device=args.device,
            batch_size=args.batch_size, threads=args.threads, dtype=args.dtype,
            fractions=fractions, policy=policy, round_to=args.round_to, method=args.method, model_name=loaded.name,
            blocks=args.blocks, log=say,
        )  # fmt: skip
    table.provenance = loaded.provenance()
    table.save(out, force=True)  # checked above: nothing but a latency table is replaced
    _print_human(table, out)
    return 0


def _print_human(table: Any, out: Any) -> None:
    from prunekit.cli._format import table as format_table

    d = table.device
    print(
        f"{table.model or 'model'} · {d['backend']} · {d['name']} · {d['threads']} threads · "
        f"{d['dtype']} · batch {table.batch_size}: dense {table.base_ms:.3f} ms"
    )
    rows = [
        [name, str(g.size), "  ".join(f"{k}: {ms:.3f}" for k, ms in zip(g.kept, g.ms, strict=True))]
        for name, g in table.groups.items()
    ]
    print(format_table(["group", "size", "ms at kept channels"], rows, right=[False, True, False]))
    for name, skipped in table.skipped.items():
        print(f"not profiled: {name} ({skipped.reason})")
    for note in table.notes:
        print(f"note: {note}")
    print(f"wrote {out} ({len(table.groups)} groups)")
