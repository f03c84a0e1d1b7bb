"""``prunekit pipeline PIPELINE.yaml --out DIR``: several models pruned under one frame budget."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli._common import add_debug, print_json, say

EXAMPLE = """\
budget_ms: 100              # per frame, all stages one after another (or budget_fraction: 0.6)
device: cpu                 # where the latency tables are measured: cpu | cuda
batch_size: 1
threads: 2
stages:
  - name: detect
    model: prunekit.nn.perception:centernet_lite   # any MODEL spec
    input_shape: 1,3,160,160
    weight: 1.0             # how much this stage's metric counts
    lut: detect.lut.json    # optional: made on the target with `prunekit profile`
  - name: depth
    model: prunekit.nn.perception:depth_net
    input_shape: 1,3,160,160
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "pipeline",
        help="plan several models (detection, segmentation, depth) under one frame budget",
        description="Per stage: sensitivity and a latency table; then one allocation of the "
        "frame budget across the stages (least weighted predicted loss), the uniform baseline "
        "(one ratio for every stage), both pruned, and the dense, planned and uniform "
        "pipelines timed interleaved, stage after stage. Writes DIR/pipeline.json and per "
        "stage DIR/<stage>/{planned,uniform,lut.json,sensitivity.json}. Example:\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("pipeline", metavar="PIPELINE.yaml")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--force", action="store_true",
                        help="replace a previous `prunekit pipeline` output in DIR")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print pipeline.json on stdout")
    add_debug(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from prunekit.api.pipeline import run_pipeline

    record = run_pipeline(args.pipeline, args.out, log=say, force=args.force)
    if args.json:
        print_json(record)
        return 0
    print(f"budget {record['budget_ms']:.3f} ms per frame ({record['device']}, batch "
          f"{record['batch_size']}); uniform ratio {record['uniform_ratio']:.0%}")  # fmt: skip
    print(f"{'':10}{'measured ms':>12}{'predicted ms':>14}{'weighted loss':>15}")
    for variant in ("dense", "planned", "uniform"):
        v = record[variant]
        print(f"{variant:10}{v['total_ms_measured']:>12.3f}{v['total_ms_predicted']:>14.3f}"
              f"{v['weighted_loss']:>15.4f}")  # fmt: skip
        for s in v["stages"]:
            print(f"  {s['name']:8}{s['measured_ms']:>12.3f}{s['predicted_ms']:>14.3f}"
                  f"   {s['metric_name']} {s['metric']:.4f}, MACs kept {s['macs_kept']:.1%}")  # fmt: skip
    print(f"wrote {args.out}/pipeline.json")
    return 0
