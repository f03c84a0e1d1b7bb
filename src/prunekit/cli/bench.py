"""``prunekit bench MODEL``: measured inference latency per batch size on a real backend."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli._common import (
    add_debug,
    add_model_arguments,
    check_threads,
    load_from_args,
    print_json,
    say,
)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "bench",
        help="measure latency (median, p90, spread) and throughput per batch size",
        description="Measure inference latency on a backend and device: warm-up, then timed "
        "calls until the median is known to within --target-ci; median, p10/p90, IQR and "
        "throughput per batch size. onnxruntime and compile check output parity with eager "
        "PyTorch before timing.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--batch-sizes", default="1,32", metavar="LIST", help="comma-separated (default 1,32)"
    )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="intra-op threads (default: PyTorch's default)"
    )
    parser.add_argument(
        "--backend", default="eager", choices=("eager", "onnxruntime", "compile", "tensorrt")
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="run convolutions in NHWC memory format (often faster on CPU)",
    )
    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "--min-time",
        type=float,
        default=None,
        metavar="S",
        help="time at least S seconds (1.0, or --max-time when that is less)",
    )
    timing.add_argument(
        "--max-time", type=float, default=20.0, metavar="S", help="stop after S seconds (20)"
    )
    timing.add_argument(
        "--min-repeats", type=int, default=10, metavar="N", help="time at least N calls (10)"
    )
    timing.add_argument(
        "--target-ci",
        type=float,
        default=0.02,
        metavar="F",
        help="stop once the median's 95%% CI half-width is within F of it (0.02)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_debug(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import math

    from prunekit.errors import InputSpecError
    from prunekit.inputs import parse_int_list
    from prunekit.measure.backends import check_backend_device
    from prunekit.measure.latency import TimingPolicy, measure_latency

    check_backend_device(args.backend, args.device)
    batch_sizes = parse_int_list(args.batch_sizes, "--batch-sizes")
    check_threads(args.threads)
    min_time = args.min_time if args.min_time is not None else min(1.0, args.max_time)
    if not (math.isfinite(min_time) and math.isfinite(args.max_time)) or min_time < 0 \
            or args.max_time <= 0:  # fmt: skip
        raise InputSpecError("--min-time and --max-time must be finite numbers of seconds "
                             "(--max-time above 0)")  # fmt: skip
    if min_time > args.max_time:  # it was quietly raised, and --max-time not honoured
        raise InputSpecError(f"--min-time {min_time:g} is more than --max-time {args.max_time:g}")
    if args.min_repeats < 1:
        raise InputSpecError(f"--min-repeats must be at least 1, got {args.min_repeats}")
    if not (math.isfinite(args.target_ci) and args.target_ci > 0):
        raise InputSpecError(f"--target-ci must be a positive fraction such as 0.02, got "
                             f"{args.target_ci:g}")  # fmt: skip
    policy = TimingPolicy(
        min_repeats=args.min_repeats,
        max_repeats=max(2000, args.min_repeats),
        min_time_s=min_time,
        max_time_s=args.max_time,
        target_rel_ci=args.target_ci,
    )
    loaded = load_from_args(args)
    say(f"{loaded.name}: input {loaded.input_spec.describe()} ({loaded.input_note})")
    report = measure_latency(
        loaded.model,
        loaded.input_spec,
        batch_sizes,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        dtype=args.dtype,
        policy=policy,
        channels_last=args.channels_last,
        progress=say,
    )
    if args.json:
        print_json({**report.to_dict(), "model": loaded.to_dict()})
        return 0
    _print_human(report, loaded.name)
    return 0


def _print_human(report: Any, name: str) -> None:
    from prunekit.cli._format import table

    rows = []
    for r in report.results:
        s = r.summary
        rows.append(
            [
                str(s.batch_size),
                f"{s.median_ms:.3f}",
                f"{s.p10_ms:.3f}",
                f"{s.p90_ms:.3f}",
                f"{s.iqr_ms:.3f}",
                f"{100 * s.relative_ci:.1f}%" + ("" if r.stable else " (!)"),
                f"{s.throughput:,.1f}",
                str(s.repeats),
            ]
        )
    headers = [
        "batch",
        "median ms",
        "p10 ms",
        "p90 ms",
        "IQR ms",
        "median ±95%",
        "samples/s",
        "calls",
    ]
    print(
        f"{name} · {report.backend} · {report.device} · {report.threads} threads · {report.dtype}"
    )
    print(table(headers, rows, right=[True] * len(headers)))
    if any(not r.stable for r in report.results):
        print(
            "(!) the median did not settle within the time limit: the machine is noisy; "
            "raise --max-time or quiet the machine"
        )
    if report.includes_host_transfers:
        print("note: these timings include host<->device copies of inputs and outputs")
