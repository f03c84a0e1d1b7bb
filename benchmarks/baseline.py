"""Baseline measurement benchmark: MAC-count accuracy and backend latency, side by side.

Part 1 (macs): for every torchvision classification weights entry, prunekit's MAC count and
Torch-Pruning's ``count_ops_and_params`` (the peer's counter) against torchvision's published
``_ops`` (GMACs at the weights' crop size). Both count on the meta device.

Part 2 (latency): eager PyTorch vs ONNX Runtime for a few models at batch 1 and a throughput
batch, in one process, with the speedup ratio; threads pinned.

    python benchmarks/baseline.py [--part macs|latency|all] [--threads 2] [--out FILE]

Writes a JSON record (environment, raw samples) and prints the tables last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision.models as tvm
from torchvision.models import get_model, get_model_weights

from prunekit.measure._environment import environment
from prunekit.measure.latency import TimingPolicy, measure_latency
from prunekit.measure.macs import count_macs
from prunekit.models import load_model

LATENCY_MODELS = ["mobilenet_v2", "resnet18", "efficientnet_b0", "resnet50", "vit_b_16"]


def _meta_model(name: str, num_classes: int, side: int) -> torch.nn.Module:
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if name.startswith("vit_"):
        kwargs["image_size"] = side
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return get_model(name, weights=None, **kwargs).eval()
        except NotImplementedError:
            return get_model(name, weights=None, **kwargs).eval().to("meta")


def macs_part() -> list[dict[str, Any]]:
    try:
        import torch_pruning as tp
    except ImportError:
        tp = None
        print("torch-pruning not installed: peer column skipped (pip install torch-pruning)")
    rows = []
    for name in tvm.list_models(module=tvm):
        for weights in get_model_weights(name):
            if "_ops" not in weights.meta or not weights.meta.get("categories"):
                continue
            side = weights.transforms().crop_size[0]
            model = _meta_model(name, len(weights.meta["categories"]), side)
            x = torch.empty(1, 3, side, side, device="meta")
            start = time.perf_counter()
            ours = count_macs(model, x).total
            ours_s = time.perf_counter() - start
            peer = peer_s = None
            if tp is not None:
                start = time.perf_counter()
                try:
                    peer = int(tp.utils.count_ops_and_params(model, x)[0])
                except Exception as exc:  # the peer cannot count this model
                    print(f"torch-pruning failed on {name}: {type(exc).__name__}")
                peer_s = time.perf_counter() - start
            rows.append(
                {
                    "model": name,
                    "weights": weights.name,
                    "input": side,
                    "published_macs": weights.meta["_ops"] * 1e9,
                    "prunekit_macs": ours,
                    "prunekit_s": ours_s,
                    "torch_pruning_macs": peer,
                    "torch_pruning_s": peer_s,
                }
            )
    return rows


def latency_part(models: list[str], batch_sizes: list[int], threads: int) -> list[dict[str, Any]]:
    policy = TimingPolicy(min_time_s=1.0, max_time_s=10.0)
    records = []
    for name in models:
        loaded = load_model(name)
        for backend in ("eager", "onnxruntime"):
            report = measure_latency(
                loaded.model,
                loaded.input_spec,
                batch_sizes,
                backend=backend,
                threads=threads,
                policy=policy,
            )
            records.append({"model": name, **report.to_dict()})
            print(f"measured {name} on {backend}", flush=True)
    return records


def _rel(a: float, b: float) -> str:
    return f"{100 * (a / b - 1):+.2f}%"


def print_macs_table(rows: list[dict[str, Any]]) -> None:
    print("\nMACs vs torchvision's published figure (selected rows; all rows in the JSON)")
    print(
        f"{'model':24} {'input':>5} {'published':>12} {'prunekit':>12} {'dev':>8} {'torch-pruning':>14} {'dev':>8}"
    )
    selected = {"mobilenet_v2", "mobilenet_v3_small", "resnet50", "efficientnet_b0", "vit_b_16",
                "swin_t", "maxvit_t", "shufflenet_v2_x0_5", "convnext_tiny", "regnet_y_16gf"}  # fmt: skip
    for r in rows:
        if r["model"] in selected and r["weights"] == "IMAGENET1K_V1":
            peer = r["torch_pruning_macs"]
            peer_txt = (
                f"{peer / 1e9:14.3f} {_rel(peer, r['published_macs']):>8}"
                if peer
                else f"{'-':>14} {'-':>8}"
            )
            print(
                f"{r['model']:24} {r['input']:5d} {r['published_macs'] / 1e9:12.3f} "
                f"{r['prunekit_macs'] / 1e9:12.3f} {_rel(r['prunekit_macs'], r['published_macs']):>8} {peer_txt}"
            )
    n = len(rows)
    ours_dev = [abs(r["prunekit_macs"] / r["published_macs"] - 1) for r in rows]
    peer_rows = [r for r in rows if r["torch_pruning_macs"]]
    peer_dev = [abs(r["torch_pruning_macs"] / r["published_macs"] - 1) for r in peer_rows]
    worst = max(rows, key=lambda r: abs(r["prunekit_macs"] / r["published_macs"] - 1))
    print(
        f"prunekit: {sum(d <= 0.02 for d in ours_dev)}/{n} weight entries within 2%, "
        f"max deviation {100 * max(ours_dev):.2f}% ({worst['model']}), "
        f"median count time {1000 * statistics.median(r['prunekit_s'] for r in rows):.0f} ms"
    )
    if peer_rows:
        print(
            f"torch-pruning: {sum(d <= 0.02 for d in peer_dev)}/{n} within 2%, "
            f"max deviation {100 * max(peer_dev):.1f}%, "
            f"median count time {1000 * statistics.median(r['torch_pruning_s'] for r in peer_rows):.0f} ms"
        )


def print_latency_table(records: list[dict[str, Any]]) -> None:
    threads = records[0]["threads"]
    print(
        f"\nLatency, CPU, {threads} threads, median ms (p90) over timed calls; speedup = eager / onnxruntime"
    )
    print(f"{'model':18} {'batch':>5} {'eager ms':>18} {'onnxruntime ms':>18} {'speedup':>8}")
    by_key = {(r["model"], r["backend"]): r for r in records}
    for model in dict.fromkeys(r["model"] for r in records):
        eager, ort = by_key[(model, "eager")], by_key[(model, "onnxruntime")]
        for e, o in zip(eager["results"], ort["results"], strict=True):
            print(
                f"{model:18} {e['batch_size']:5d} {e['median_ms']:9.2f} ({e['p90_ms']:6.2f}) "
                f"{o['median_ms']:9.2f} ({o['p90_ms']:6.2f}) {e['median_ms'] / o['median_ms']:7.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("macs", "latency", "all"), default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--models", default=",".join(LATENCY_MODELS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/baseline.json"))
    args = parser.parse_args()
    record: dict[str, Any] = {"environment": environment(), "threads": args.threads}
    if args.part in ("macs", "all"):
        record["macs"] = macs_part()
    if args.part in ("latency", "all"):
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        record["latency"] = latency_part(args.models.split(","), batch_sizes, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"\nrecord written to {args.out}")
    if "macs" in record:
        print_macs_table(record["macs"])
    if "latency" in record:
        print_latency_table(record["latency"])


if __name__ == "__main__":
    main()
