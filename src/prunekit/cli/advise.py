"""``prunekit advise MODEL``: what each kind of pruning buys here, measured, and one sentence."""

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

COMMAND = "prunekit advise"
ADVISE_FILE = "advise.json"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "advise",
        help="measure what unstructured, 2:4, channel and block pruning buy on this machine",
        description="Build a pruned copy of the model per kind of pruning -- unstructured "
        "50/75/90%% on dense kernels and on CSR sparse kernels (Linear layers), 2:4 on sparse "
        "tensor cores (CUDA, compute capability >= 8.0), 25/50%% of every channel group "
        "removed (as `prunekit prune --ratio`), 25%% of the residual blocks (a transformer's "
        "encoder layers) dropped -- time each interleaved with the dense model, print the measured speedups and a one-sentence "
        "recommendation. A kind that cannot run here gets a row without a time and a note "
        "saying why.",
    )
    add_model_arguments(parser)
    parser.add_argument("--device", default="cpu", metavar="cpu|cuda", help="(default cpu)")
    parser.add_argument("--backend", default="eager", metavar="NAME",
                        help="eager, onnxruntime or compile (default eager); sparse kernels "
                        "are timed on eager only")  # fmt: skip
    parser.add_argument(
        "--batch-sizes", default="1,32", metavar="LIST", help="comma-separated (default 1,32)"
    )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="intra-op threads (default: PyTorch's default)"
    )
    parser.add_argument("--rounds", type=int, default=5, metavar="N",
                        help="interleaved timing rounds; each speedup is the median of the "
                        "per-round ratios (default 5)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print advise.json on stdout")
    parser.add_argument("--out", metavar="DIR", help="also write DIR/advise.json")
    parser.add_argument("--force", action="store_true",
                        help="replace DIR when it holds a previous `prunekit advise` output "
                        "and nothing else")  # fmt: skip
    add_debug(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from prunekit.advise import advise, check_arguments
    from prunekit.errors import InputSpecError
    from prunekit.inputs import parse_int_list

    # every check that needs no model comes first: bad input fails at once, writes nothing
    batch_sizes = parse_int_list(args.batch_sizes, "--batch-sizes")
    check_threads(args.threads)
    check_arguments(batch_sizes, args.device, args.backend, args.threads, args.rounds)
    out = None
    if args.out is not None:
        from prunekit._outputs import check_output_dir

        out = check_output_dir(args.out, COMMAND, force=args.force, log=say)
    elif args.force:
        raise InputSpecError("--force replaces an --out directory: give --out DIR")
    loaded = load_from_args(args)
    say(f"{loaded.name}: input {loaded.input_spec.describe()} ({loaded.input_note})")
    record = advise(loaded.model, loaded.input_spec, batch_sizes=batch_sizes, device=args.device,
                    backend=args.backend, threads=args.threads, rounds=args.rounds,
                    model_name=loaded.name, log=say)  # fmt: skip
    record["source"] = loaded.to_dict()
    if out is not None:
        text = json.dumps(record, indent=1, allow_nan=False) + "\n"

        def writer(staging: Path) -> None:
            (staging / ADVISE_FILE).write_text(text, encoding="utf-8")

        out.write(writer, say)
    if args.json:
        print_json(record)
        return 0
    print_table(record)
    if out is not None:
        print(f"wrote {args.out}/{ADVISE_FILE}")
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_table(record: dict[str, Any]) -> None:
    from prunekit.cli._format import table

    rows: list[list[str]] = []
    notes: dict[str, str] = {}
    for r in record["rows"]:
        what = f"{r['strategy']} {r['level']:g} ({r['kernel']})"
        if r["note"]:
            notes.setdefault(what, r["note"])
        spread = r.get("speedup_range")
        rows.append([
            r["strategy"], f"{r['level']:g}", r["kernel"], str(r["batch_size"]),
            _ms(r["dense_ms"]), _ms(r["ms"]),
            "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
            f"{spread[0]:.2f}-{spread[1]:.2f}x" if spread else "-",
            "-" if r["macs_kept"] is None else f"{r['macs_kept']:.1%}",
            "*" if r["note"] else "",
        ])  # fmt: skip
    headers = ["strategy", "level", "kernel", "batch", "dense ms", "ms", "speedup",
               "per-round", "MACs kept", "note"]  # fmt: skip
    name = record.get("device_name") or record["device"]
    print(f"{record['model']} · {record['backend']} · {record['device']} ({name}) · "
          f"{record['threads']} thread{'s' if record['threads'] != 1 else ''} · "
          f"{record['rounds']} interleaved rounds")  # fmt: skip
    print(table(headers, rows, right=[False, True, False, True, True, True, True, True, True,
                                      False]))  # fmt: skip
    for what, note in notes.items():
        print(f"* {what}: {note}")
    print(f"\nrecommendation: {record['recommendation']}")
