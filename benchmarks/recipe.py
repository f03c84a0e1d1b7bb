"""The mobile-CNN tutorial's recipe end to end on Fashion-MNIST, then its fine-tune under torchrun.

One run of ``docs/tutorials/mobile-cnn.yaml`` (train a MobileNetV2-style CNN, measure the
baseline, sensitivity, plan for 50% of the MACs, prune, fine-tune with distillation from the
dense model, verify latency, evaluate on the held-out test split), printing:

- held-out top-1 of the dense and final models and the retention (bar: >= 98% at 50% MACs);
- MACs and parameters kept;
- measured latency and speedup at batch 1 and 32 (eager, interleaved rounds);
- wall time per step;
- the same fine-tune again, under ``torchrun --nproc-per-node 2`` (gloo on the CPU, half the
  per-rank batch so the global batch is the same): its accuracy and wall time next to the
  single-process fine-tune's.

    python benchmarks/recipe.py [--recipe docs/tutorials/mobile-cnn.yaml] [--out runs/bench-recipe]
                                [--no-torchrun] [--json FILE]

A rerun reuses finished steps (delete --out to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BAR_RETENTION = 0.98
BAR_MACS = 0.5


def _torchrun_finetune(run_dir: Path, recipe: dict, out: Path) -> dict:
    finetune = recipe.get("finetune", {})
    epochs = finetune.get("epochs", 2)
    batch = max(1, finetune.get("batch_size", 64) // 2)  # per rank: the same global batch
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
        "-m", "prunekit", "finetune", str(run_dir / "prune"), "--data", recipe["data"],
        "--teacher", str(run_dir / ("train" if (run_dir / "train").is_dir() else "prune")),
        "--epochs", str(epochs), "--batch-size", str(batch), "--lr", str(finetune.get("lr", 0.01)),
        "--kd-temperature", str(finetune.get("kd_temperature", 4.0)),
        "--input-shape", str(recipe.get("input_shape", "1,1,28,28")),
        "--out", str(out), "--force", "--json",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or ["failed"], "seconds": seconds}
    record = json.loads(done.stdout)
    return {"seconds": seconds, "top1": record["eval"]["top1"], "samples": record["eval"]["samples"],
            "retention": record.get("retention"), "stopped_by": record.get("stopped_by")}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "docs" / "tutorials" / "mobile-cnn.yaml"))
    parser.add_argument("--out", default="runs/bench-recipe")
    parser.add_argument("--no-torchrun", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    from prunekit.api.run import run_recipe

    start = time.perf_counter()
    summary = run_recipe(args.recipe, args.out, log=lambda m: print(m, file=sys.stderr, flush=True))
    total = time.perf_counter() - start
    dense, final = summary["dense"], summary["final"]
    macs_kept = final["macs"] / dense["macs"]
    print(f"recipe {args.recipe} on {summary['data']['spec']} "
          f"(held-out: {summary['data']['eval_samples']} samples, {summary['data']['split']['eval_from']})")  # fmt: skip
    print(f"{'':24}{'dense':>12}{'final':>12}{'ratio':>10}")
    print(
        f"{'top-1 (held out)':24}{dense['accuracy']:>12.4f}{final['accuracy']:>12.4f}{summary['retention']:>10.2%}"
    )
    print(f"{'MACs':24}{dense['macs']:>12,}{final['macs']:>12,}{macs_kept:>10.2%}")
    print(
        f"{'parameters':24}{dense['params']:>12,}{final['params']:>12,}{final['params'] / dense['params']:>10.2%}"
    )
    for row in summary["latency"]:
        label = f"latency ms, batch {row['batch_size']}"
        print(f"{label:24}{row['dense_ms']:>12.3f}{row['final_ms']:>12.3f}{row['speedup']:>9.2f}x")
    print("wall time per step (s): " + ", ".join(f"{k} {v:.1f}" for k, v in summary["seconds"].items())
          + f"; total {total:.1f}")  # fmt: skip
    ok = summary["retention"] >= BAR_RETENTION and macs_kept <= BAR_MACS + 0.01
    print(
        f"bar: retention >= {BAR_RETENTION:.0%} at <= {BAR_MACS:.0%} MACs: {'met' if ok else 'NOT met'}"
    )
    result = {"summary": summary, "total_s": total, "bar_met": ok}
    if not args.no_torchrun:
        recipe = yaml.safe_load(Path(args.recipe).read_text())
        ddp = _torchrun_finetune(Path(args.out), recipe, Path(args.out + "-ddp-finetune"))
        single = summary["seconds"].get("finetune")
        if "error" in ddp:
            print(f"torchrun 2 ranks: failed: {ddp['error']}")
        else:
            print(
                f"fine-tune, 1 process : top-1 {final['accuracy']:.4f}, {single:.1f} s (inside the recipe)"
            )
            print(f"fine-tune, torchrun 2: top-1 {ddp['top1']:.4f}, {ddp['seconds']:.1f} s "
                  f"(gloo, same global batch; includes start-up and evaluation)")  # fmt: skip
        result["torchrun"] = ddp
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
