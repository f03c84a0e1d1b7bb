"""``prunekit report RUN_DIR... --out DIR``: the page a manager reads, from prunekit's outputs."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli._common import add_debug, print_json, say

COST_HELP = (
    "serving assumptions, KEY=VALUE,...: gpu (T4, A10G, L4, A100, H100 priced from the "
    "shipped table, or any name with price=), price (USD per GPU-hour), qps (peak queries "
    "per second, default 100), utilization (0-1, default 0.6), batch_size (a measured one; "
    "default the smallest), hours (per year, default 8760), dense_ms (the dense model's ms "
    "per batch on that GPU, when the latency was measured elsewhere). Repeat for several "
    "GPU types. Example: gpu=L4,price=0.805,qps=100,utilization=0.6"
)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "report",
        help="write the report: accuracy retention, MACs and latency cut, GPU cost, plots",
        description="Read the outputs of prunekit commands (a `prunekit run` directory, a "
        "prune, finetune or sparsify output, an mcu/demo output, a transformer output, an "
        "`advise --out` directory) and write DIR/report.html (one self-contained page), "
        "DIR/report.json and DIR/report.md. Several inputs are compared side by side; they "
        "must prune the same dense model. An advise output gets a section of its own: what "
        "each kind of pruning measured on its machine, and the recommendation.",
    )
    parser.add_argument("inputs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", required=True, metavar="DIR")
    cost = parser.add_mutually_exclusive_group()
    cost.add_argument("--cost", action="append", metavar="SPEC", help=COST_HELP)
    cost.add_argument("--cost-file", metavar="FILE",
                      help="YAML or JSON: one mapping of --cost keys, a list of them, or "
                      "{gpus: [...]}")  # fmt: skip
    parser.add_argument("--title", metavar="T", help="the page's title")
    parser.add_argument("--name", action="append", metavar="NAME",
                        help="a column name for each input, in order (default: the "
                        "directory names)")  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="replace a previous `prunekit report` output in DIR")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print report.json on stdout")
    add_debug(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from prunekit._outputs import check_output_dir
    from prunekit.report.build import build_report, write_report
    from prunekit.report.costs import load_cost_file, parse_cost

    out = check_output_dir(args.out, "prunekit report", force=args.force, log=say)
    specs = (load_cost_file(args.cost_file) if args.cost_file
             else [parse_cost(text) for text in args.cost or []])  # fmt: skip
    report = build_report(args.inputs, specs, title=args.title, names=args.name)
    write_report(report, out, log=say)
    if args.json:
        print_json(report)
        return 0
    for run in report["runs"]:
        print(_headline(run))
    print(f"wrote {args.out}/ (report.html, report.json, report.md, "
          f"{len(report['figures'])} figures)")  # fmt: skip
    return 0


def _headline(run: dict[str, Any]) -> str:
    acc, lat, cost = run["accuracy"], (run["latency"] or [None])[0], run["cost"]
    parts = [f"{run['name']}:"]
    if acc["final"] is not None and acc["dense"]:
        parts.append(f"{acc['metric']} {acc['dense']:.4f} -> {acc['final']:.4f} "
                     f"(retention {run['retention']:.2%}, {acc['samples']} {acc['split']} samples);")  # fmt: skip
    else:
        parts.append("accuracy not measured;")
    if run["macs"]["reduction"] is not None:
        parts.append(f"MACs -{run['macs']['reduction']:.1%};")
    if lat:
        parts.append(f"batch {lat['batch_size']} {lat['dense_ms']:.3f} -> {lat['final_ms']:.3f} ms "
                     f"({lat['speedup']:.2f}x);")  # fmt: skip
        if cost["annual_saving"] is not None:
            parts.append(f"{cost['gpu']}: ${cost['annual_dense']:,.0f} -> "
                         f"${cost['annual_final']:,.0f} a year")  # fmt: skip
    else:
        parts.append("latency not measured")
    return " ".join(parts)
