"""MobileNetV2 at 60% of its MACs: prunekit's planner vs Torch-Pruning uniform vs a narrower net.

Part (a), accuracy: torchvision's MobileNetV2 architecture (num_classes=10) trained here on
Fashion-MNIST (Debian ``dataset-fashion-mnist``; 28x28 padded to 32x32, grey replicated to 3
channels), then cut to 60% of its MACs three ways, each with the same fine-tuning budget:

* ``prunekit``: sensitivity of every group (output KL divergence on calibration images) ->
  ``make_plan(macs=0.6)`` -> ``apply_plan`` -> fine-tuning with distillation from the dense model;
* ``torch-pruning``: Torch-Pruning's ``MetaPruner`` with group L1 magnitude and one uniform
  ratio (bisected to 60% MACs), fine-tuned with cross-entropy (its documented recipe);
* ``width``: ``mobilenet_v2(width_mult=w)`` at ~60% MACs trained from scratch for the dense
  model's epochs plus the fine-tuning epochs.

Accuracy on the 10,000 test images; latency at batch 1 and 32 (eager and ONNX Runtime).

Part (b), latency: the ImageNet-shaped model (224x224, random weights: only structure matters)
at 60% MACs, prunekit's latency-aware plan (a latency table measured here, ``prunekit
profile``; channel counts and dropped residual blocks) vs Torch-Pruning uniform, next to the
ideal 1 / 0.6 = 1.67x.

    python benchmarks/mobilenetv2.py [--part a|b|all] [--threads 2] [--cache DIR] [--out FILE]

Trained weights and intermediate files are cached in ``--cache`` so a rerun skips finished work.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from prunekit.data.idx import FASHION_MNIST_DEBIAN_DIR
from prunekit.evaluate import evaluate_classification
from prunekit.graph import trace_channels
from prunekit.measure.compare import compare_latency
from prunekit.measure.latency import TimingPolicy, measure_latency
from prunekit.measure.macs import count_macs
from prunekit.planning.apply import apply_plan
from prunekit.planning.planner import Target, make_plan
from prunekit.planning.sensitivity import OutputDivergence, analyze_sensitivity
from prunekit.recovery import FinetuneConfig, finetune

SIDE = 32
TARGET = 0.6


def log(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- data
def fashion_images(data_dir: str, train_samples: int) -> dict[str, torch.utils.data.TensorDataset]:
    from prunekit.mcu.datasets import load_idx_splits

    splits = load_idx_splits("fashion-mnist", data_dir, validation=5000, seed=0)

    def images(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 28, 28)
        x = F.pad(x, (2, 2, 2, 2))
        x = (x - 0.2860) / 0.3530  # Fashion-MNIST mean / std of the training images
        return x.expand(-1, 3, -1, -1).contiguous()

    train_x, train_y = splits.train_x[:train_samples], splits.train_y[:train_samples]
    return {
        "train": torch.utils.data.TensorDataset(images(train_x), train_y),
        "val": torch.utils.data.TensorDataset(images(splits.val_x), splits.val_y),
        "test": torch.utils.data.TensorDataset(images(splits.test_x), splits.test_y),
    }


def loader(dataset: Any, shuffle: bool, seed: int = 0, batch_size: int = 128) -> Any:
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                       generator=generator)  # fmt: skip


def top1(model: nn.Module, dataset: Any) -> float:
    return float(evaluate_classification(model, loader(dataset, False, batch_size=500)).top1)


def train(model: nn.Module, data: dict[str, Any], epochs: int, lr: float, checkpoints: Path,
          teacher: nn.Module | None = None) -> nn.Module:  # fmt: skip
    config = FinetuneConfig(epochs=epochs, lr=lr, optimizer="adamw", weight_decay=1e-4,
                            warmup_epochs=min(1.0, epochs / 4), distill_alpha=0.7)  # fmt: skip
    result = finetune(model, loader(data["train"], True), config=config, teacher=teacher,
                      val_loader=loader(data["val"], False, batch_size=500),
                      checkpoint_dir=checkpoints, log=log)  # fmt: skip
    log(f"  trained {result.epochs_run} epochs, best validation top-1 "
        f"{result.best.val_top1 if result.best else float('nan'):.2%}")  # fmt: skip
    return model


# ----------------------------------------------------------------------------- methods
def macs_fraction(model: nn.Module, dense_macs: int, side: int) -> float:
    return count_macs(model, torch.randn(1, 3, side, side)).total / dense_macs


def torch_pruning_uniform(model: nn.Module, side: int, dense_macs: int) -> nn.Module:
    """The uniform Torch-Pruning ratio (group L1) landing closest to the target MACs."""
    import torch_pruning as tp

    def pruned(ratio: float) -> nn.Module:
        copy_ = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(
            copy_, torch.randn(1, 3, side, side),
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=ratio, ignored_layers=[copy_.classifier[1]],
        )  # fmt: skip
        pruner.step()
        return copy_

    lo, hi = 0.0, 0.9
    best = (1.0, model)
    for _ in range(14):
        mid = (lo + hi) / 2
        candidate = pruned(mid)
        fraction = macs_fraction(candidate, dense_macs, side)
        if abs(fraction - TARGET) < abs(best[0] - TARGET):
            best = (fraction, candidate)
        if fraction > TARGET:
            lo = mid
        else:
            hi = mid
    log(f"  torch-pruning uniform ratio {(lo + hi) / 2:.4f}: {best[0]:.2%} of the MACs")
    return best[1]


def width_model(dense_macs: int, side: int) -> tuple[nn.Module, float]:
    """``mobilenet_v2(width_mult=w)`` with MACs closest to the target (w on a 0.01 grid)."""
    best: tuple[float, float] | None = None
    for w in np.arange(0.50, 1.0, 0.01):
        with torch.device("meta"):
            m = torchvision.models.mobilenet_v2(num_classes=10, width_mult=float(w))
        fraction = count_macs(m, torch.randn(1, 3, side, side, device="meta")).total / dense_macs
        if best is None or abs(fraction - TARGET) < abs(best[1] - TARGET):
            best = (float(w), fraction)
    assert best is not None
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v2(num_classes=10, width_mult=best[0]), best[0]


def latency(model: nn.Module, side: int, threads: int, quick: bool) -> dict[str, float]:
    policy = TimingPolicy(min_time_s=0.5 if quick else 1.5, max_time_s=4 if quick else 10)
    out: dict[str, float] = {}
    for backend in ("eager", "onnxruntime"):
        report = measure_latency(model, torch.randn(1, 3, side, side), [1, 32], backend=backend,
                                 threads=threads, policy=policy)  # fmt: skip
        for r in report.results:
            out[f"{backend}_b{r.summary.batch_size}"] = r.summary.median_ms
    return out


# ----------------------------------------------------------------------------- part (a)
def part_a(args: argparse.Namespace) -> dict[str, Any]:
    cache = Path(args.cache)
    data = fashion_images(args.data_dir, args.train_samples)
    log(f"fashion-mnist {SIDE}x{SIDE}: {len(data['train'])} train / {len(data['val'])} "
        f"validation / {len(data['test'])} test images")  # fmt: skip
    torch.manual_seed(0)
    dense = torchvision.models.mobilenet_v2(num_classes=10)
    start = time.perf_counter()
    train(dense, data, args.dense_epochs, 2e-3, cache / "dense")
    dense.eval()
    dense_time = time.perf_counter() - start
    x = torch.randn(1, 3, SIDE, SIDE)
    dense_macs = count_macs(dense, x).total
    rows: dict[str, dict[str, Any]] = {}
    rows["dense"] = {"top1": top1(dense, data["test"]), "macs": 1.0,
                     "params": sum(p.numel() for p in dense.parameters())}  # fmt: skip
    log(f"dense: test top-1 {rows['dense']['top1']:.2%} ({dense_time:.0f} s)")

    # prunekit: sensitivity -> plan -> apply -> fine-tune with distillation
    start = time.perf_counter()
    ours = copy.deepcopy(dense)
    graph = trace_channels(ours, x)
    calibration = [data["train"].tensors[0][i : i + 128] for i in range(0, 512, 128)]
    sens = analyze_sensitivity(ours, x, graph, OutputDivergence(ours, calibration),
                               ratios=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                               cache=cache / "sensitivity.json", model_name="mobilenet_v2-fmnist",
                               log=log)  # fmt: skip
    sens.plot(cache / "sensitivity.png")
    plan = make_plan(ours, x, graph, sens, Target("macs", TARGET), round_to=args.round_to, log=log)
    plan.save(cache / "plan.json")
    apply_plan(ours, x, plan, graph=graph, batches=calibration)
    plan_time = time.perf_counter() - start
    train(ours, data, args.finetune_epochs, 1e-3, cache / "prunekit", teacher=dense)
    rows["prunekit"] = {"plan_s": plan_time}

    tp_model = torch_pruning_uniform(dense, SIDE, dense_macs)
    train(tp_model, data, args.finetune_epochs, 1e-3, cache / "torch_pruning")
    rows["torch-pruning"] = {}

    narrow, w = width_model(dense_macs, SIDE)
    train(narrow, data, args.dense_epochs + args.finetune_epochs, 2e-3, cache / "width")
    rows[f"width {w:.2f}"] = {}

    models = {"dense": dense, "prunekit": ours, "torch-pruning": tp_model, f"width {w:.2f}": narrow}
    for name, model in models.items():
        model.eval()
        row = rows[name]
        row.setdefault("top1", top1(model, data["test"]))
        row["macs"] = macs_fraction(model, dense_macs, SIDE)
        row["params"] = sum(p.numel() for p in model.parameters())
        row["retention"] = row["top1"] / rows["dense"]["top1"]
        row["latency_ms"] = latency(model, SIDE, args.threads, args.quick)
        log(f"measured {name}")
    return {"rows": rows, "plan": plan.to_dict()}


def print_a(result: dict[str, Any]) -> None:
    rows = result["rows"]
    dense = rows["dense"]["latency_ms"]
    print(f"\n(a) MobileNetV2 on Fashion-MNIST {SIDE}x{SIDE}, cut to {TARGET:.0%} MACs, same "
          "fine-tuning budget; latency speedup vs dense (2 threads)")  # fmt: skip
    keys = list(dense)
    print(f"{'method':15} {'top-1':>7} {'retain':>7} {'MACs':>6} {'params':>9} "
          + " ".join(f"{k:>15}" for k in keys))  # fmt: skip
    for name, r in rows.items():
        speed = " ".join(
            f"{r['latency_ms'][k]:7.2f}ms {dense[k] / r['latency_ms'][k]:4.2f}x" for k in keys
        )
        print(f"{name:15} {r['top1']:7.2%} {r['retention']:7.2%} {r['macs']:6.1%} "
              f"{r['params']:9,} {speed}")  # fmt: skip
    pk, tp = rows["prunekit"]["top1"], rows["torch-pruning"]["top1"]
    print(f"prunekit - torch-pruning: {100 * (pk - tp):+.2f} points; prunekit retention "
          f"{rows['prunekit']['retention']:.2%}")  # fmt: skip


# ----------------------------------------------------------------------------- part (b)
def part_b(args: argparse.Namespace) -> dict[str, Any]:
    from prunekit.planning.lut import profile_latency

    cache = Path(args.cache)
    torch.manual_seed(0)
    dense = torchvision.models.mobilenet_v2().eval()
    x = torch.randn(1, 3, 224, 224)
    dense_macs = count_macs(dense, x).total
    graph = trace_channels(dense, x)
    lut_path = cache / f"lut_{args.lut_method}_b{args.lut_batch}_r{args.round_to}.json"
    if lut_path.exists():
        from prunekit.planning.lut import LatencyTable

        lut = LatencyTable.load(lut_path)
    else:
        lut = profile_latency(dense, x, graph, batch_size=args.lut_batch, threads=args.threads,
                              fractions=(1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25),
                              round_to=args.round_to, method=args.lut_method,
                              model_name="mobilenet_v2", log=log)  # fmt: skip
        lut.save(lut_path)
    calibration = [torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(1))]
    sens = analyze_sensitivity(dense, x, graph, OutputDivergence(dense, calibration),
                               ratios=[0.25, 0.5, 0.75], cache=cache / "sensitivity224.json",
                               log=log)  # fmt: skip
    plan = make_plan(dense, x, graph, sens, Target("macs", TARGET), lut=lut,
                     latency_weight=args.latency_weight, round_to=args.round_to, log=log)  # fmt: skip
    plan.save(cache / "plan224.json")
    log(f"plan: {len(plan.drop_blocks)} residual blocks dropped ({', '.join(plan.drop_blocks)})")
    ours = copy.deepcopy(dense)
    apply_plan(ours, x, plan, graph=graph, batches=calibration)
    tp_model = torch_pruning_uniform(dense, 224, dense_macs)
    models = {"dense": dense, "prunekit": ours, "torch-pruning": tp_model}
    rows: dict[str, dict[str, Any]] = {
        name: {"macs": macs_fraction(model, dense_macs, 224), "latency_ms": {}, "speedup": {}}
        for name, model in models.items()
    }
    comparisons = []
    for backend in ("eager", "onnxruntime"):
        # interleaved rounds: the speedup is the median of per-round ratios (measure.compare)
        for comparison in compare_latency(models, torch.randn(1, 3, 224, 224), [1, 32],
                                          backend=backend, threads=args.threads,
                                          rounds=3 if args.quick else 7):  # fmt: skip
            key = f"{backend}_b{comparison.batch_size}"
            for name in models:
                rows[name]["latency_ms"][key] = comparison.median_ms(name)
                rows[name]["speedup"][key] = comparison.speedup(name)
            comparisons.append(comparison.to_dict())
            log(f"measured {key}: " + ", ".join(
                f"{n} {comparison.speedup(n):.2f}x" for n in models))  # fmt: skip
    return {"rows": rows, "plan": plan.to_dict(), "comparisons": comparisons}


def print_b(result: dict[str, Any]) -> None:
    rows = result["rows"]
    dense = rows["dense"]["latency_ms"]
    ideal = 1 / TARGET
    print(f"\n(b) MobileNetV2 224x224 at {TARGET:.0%} MACs: measured speedup (fraction of the "
          f"ideal {ideal:.2f}x)")  # fmt: skip
    keys = list(dense)
    print(f"{'method':15} {'MACs':>6} " + " ".join(f"{k:>22}" for k in keys))
    for name, r in rows.items():
        cells = " ".join(
            f"{r['latency_ms'][k]:7.2f}ms {r['speedup'][k]:4.2f}x "
            + (f"({r['speedup'][k] / ideal:4.2f})" if name != "dense" else "      ")
            for k in keys
        )
        print(f"{name:15} {r['macs']:6.1%} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="all", choices=("a", "b", "all"))
    parser.add_argument("--data-dir", default=str(FASHION_MNIST_DEBIAN_DIR))
    parser.add_argument("--train-samples", type=int, default=30000)
    parser.add_argument("--dense-epochs", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    # ONNX Runtime's CPU convolutions work on blocks of 16 channels with AVX-512 (8 with AVX2);
    # other counts make it insert layout reorders that cost more than the channels saved
    parser.add_argument("--round-to", type=int, default=16)
    parser.add_argument("--lut-batch", type=int, default=32)
    parser.add_argument("--latency-weight", type=float, default=1.0)
    parser.add_argument("--lut-method", default="modules", choices=("modules", "measure"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="shorter latency timing")
    parser.add_argument("--cache", default="benchmarks/results/mobilenetv2")
    parser.add_argument("--out", default="benchmarks/results/mobilenetv2.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, Any] = {"args": vars(args)}
    if args.part in ("a", "all"):
        results["a"] = part_a(args)
    if args.part in ("b", "all"):
        results["b"] = part_b(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    if "a" in results:
        print_a(results["a"])
    if "b" in results:
        print_b(results["b"])
    print(f"total time {time.perf_counter() - start:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
