"""CUDA checks of the front door and the recovery engine, on one GPU (run where one is lent).

1. ``pk.recover_`` on CUDA with each precision (off, bf16, fp16): held-out top-1, seconds,
   next to the same run on the CPU;
2. ``prunekit finetune --device cuda`` on a pruned artifact (the artifact is written from CPU
   tensors and loads back with the recorded accuracy);
3. ``torchrun --nproc-per-node 1`` (an NCCL process group) of the same command;
4. ``prunekit run`` of a recipe whose train / finetune / verify steps run on CUDA.

    PYTHONPATH=src python benchmarks/gpu_check.py [--out DIR]

Data: scikit-learn's digits (no download). Prints one line per check and ``ALL OK`` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import prunekit as pk

SPEC = "prunekit.nn.mobile_cnn:MobileCNN"


def _check(name: str, ok: bool, detail: str) -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/prunekit-gpu-check")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'}", flush=True)  # fmt: skip
    results = []
    scores = {}
    for device, amp in (("cpu", "off"), ("cuda", "off"), ("cuda", "bf16"), ("cuda", "fp16")):
        loaded = pk.load(SPEC, input_shapes=[(1, 1, 8, 8)])
        start = time.perf_counter()
        record: dict = {}
        pk.recover_(loaded.model, "digits", pk.RecoverConfig(epochs=4, lr=0.1, batch_size=32,
                    device=device, amp=amp), record=record)  # fmt: skip
        seconds = time.perf_counter() - start
        top1 = pk.evaluate(loaded.model, "digits")["top1"]
        scores[(device, amp)] = top1
        results.append(_check(f"recover_ on {device}, amp {amp}", top1 > 0.8 and
                              all(h["train_loss"] == h["train_loss"] for h in record["history"]),
                              f"held-out top-1 {top1:.4f}, {seconds:.1f} s, "
                              f"stopped by {record['stopped_by']}"))  # fmt: skip
        if (device, amp) == ("cuda", "off"):
            loaded.model.cpu()
            pk.save(loaded.model, out / "dense", force=True)
    pruned = pk.load(out / "dense")
    pk.prune_(pruned.model, pruned.input_spec.make(1), pk.TargetPruning(macs=0.5, round_to=8))
    pk.save(pruned.model, out / "pruned", force=True)
    base = [sys.executable, "-m", "prunekit", "finetune", str(out / "pruned"), "--data", "digits",
            "--teacher", str(out / "dense"), "--epochs", "3", "--batch-size", "32", "--json",
            "--force"]  # fmt: skip
    env = {**os.environ}
    done = subprocess.run([*base, "--device", "cuda", "--out", str(out / "ft")],
                          capture_output=True, text=True, env=env, check=False)  # fmt: skip
    if done.returncode == 0:
        record = json.loads(done.stdout)
        again = pk.evaluate(pk.load(out / "ft").model, "digits")["top1"]
        results.append(_check("prunekit finetune --device cuda", again == record["eval"]["top1"],
                              f"held-out top-1 {record['eval']['top1']:.4f} (artifact reloaded: "
                              f"{again:.4f}), retention {record['retention']:.2%}"))  # fmt: skip
    else:
        results.append(_check("prunekit finetune --device cuda", False, done.stderr[-800:]))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1",
                "--master-port", "29541", *base[1:], "--out", str(out / "ft-ddp")]  # fmt: skip
    done = subprocess.run(torchrun, capture_output=True, text=True, env=env, check=False)
    if done.returncode == 0:
        record = json.loads(done.stdout)
        results.append(_check("torchrun (NCCL) finetune", True,
                              f"held-out top-1 {record['eval']['top1']:.4f}"))  # fmt: skip
    else:
        results.append(_check("torchrun (NCCL) finetune", False, done.stderr[-800:]))
    recipe = out / "recipe.yaml"
    recipe.write_text(
        "model: prunekit.nn.mobile_cnn:MobileCNN\ninput_shape: 1,1,8,8\ndata: digits\n"
        "target: macs=0.5\nsteps: [train, baseline, prune, finetune, verify, evaluate]\n"
        "train: {epochs: 4, lr: 0.1, batch_size: 32, device: cuda}\n"
        "finetune: {epochs: 2, batch_size: 32, device: cuda}\n"
        "verify: {device: cuda, batch_sizes: [1, 256]}\n"
    )
    done = subprocess.run([sys.executable, "-m", "prunekit", "run", str(recipe), "--out",
                           str(out / "run"), "--json"], capture_output=True, text=True, env=env,
                          check=False)  # fmt: skip
    if done.returncode == 0:
        summary = json.loads(done.stdout)
        lat = ", ".join(f"batch {r['batch_size']}: {r['dense_ms']:.3f} -> {r['final_ms']:.3f} ms "
                        f"({r['speedup']:.2f}x)" for r in summary["latency"])  # fmt: skip
        results.append(_check("prunekit run on cuda", summary["retention"] > 0.9,
                              f"retention {summary['retention']:.2%}, {lat}"))  # fmt: skip
    else:
        results.append(_check("prunekit run on cuda", False, done.stderr[-800:]))
    print("ALL OK" if all(results) else "SOME FAILED", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
