"""Coverage and speed of structured pruning over the torchvision classification zoo.

Every torchvision classification model up to 120 M parameters, at 224x224 (299 for
inception_v3), random weights, pruned at a 0.3 ratio by prunekit and by Torch-Pruning 1.6
(``pip install 'prunekit[bench]'``), one after the other in the same process, each on a fresh
copy of the model. Both use L1 group magnitude and leave the classifier's output alone.

* trace: prunekit ``trace_channels``; Torch-Pruning: building its ``MetaPruner`` (dependency
  graph).
* prune: prunekit ``prune`` (group check on a meta copy, selection, surgery); Torch-Pruning
  ``pruner.step()``.
* success: no exception, the pruned model runs on the input, and has fewer parameters.

Each tool runs on each model in its own subprocess (after a warm-up on a small model, so that
one-time imports are not timed), with a time limit: a tool that hangs or runs out of memory
on one model fails that model only.

Writes a JSON record (environment, per-model figures) and prints a table, then one summary line:
``COVERAGE prunekit X/N torch-pruning Y/N; TIME median ratio prunekit/torch-pruning R``.

    python benchmarks/zoo.py [--models a,b,...] [--threads 2] [--timeout 600] [--out FILE] [--skip-peer]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models import get_model, get_model_weights

from prunekit._utils import describe_exception
from prunekit.graph import trace_channels
from prunekit.measure._environment import environment
from prunekit.pruning import prune

MAX_PARAMS = 120_000_000


def zoo() -> list[str]:
    return [
        n
        for n in tvm.list_models(module=tvm)
        if next(iter(get_model_weights(n))).meta["num_params"] <= MAX_PARAMS
    ]


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_model(name, weights=None).eval()
    side = 299 if name == "inception_v3" else 224
    return model, torch.randn(1, 3, side, side)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _runs(model: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        model.eval()(x)
    return True


def run_prunekit(name: str) -> dict[str, Any]:
    model, x = build(name)
    before = _params(model)
    record: dict[str, Any] = {"ok": False}
    try:
        start = time.perf_counter()
        graph = trace_channels(model, x)
        record["trace_s"] = time.perf_counter() - start
        start = time.perf_counter()
        result = prune(model, x, ratio=0.3, graph=graph)
        record["prune_s"] = time.perf_counter() - start
        record["skipped_groups"] = len(result.skipped)
        record["params_kept"] = _params(model) / before
        record["ok"] = _runs(model, x) and _params(model) < before
    except Exception as exc:
        record["error"] = describe_exception(exc)
    return record


def _classifier(model: nn.Module) -> list[nn.Module]:
    """The layers producing the 1000 class logits (left alone, as prunekit does)."""
    return [
        m
        for m in model.modules()
        if (isinstance(m, nn.Linear) and m.out_features == 1000)
        or (isinstance(m, nn.Conv2d) and m.out_channels == 1000)
    ]


def run_torch_pruning(name: str) -> dict[str, Any]:
    import torch_pruning as tp

    model, x = build(name)
    before = _params(model)
    record: dict[str, Any] = {"ok": False}
    try:
        start = time.perf_counter()
        pruner = tp.pruner.MetaPruner(
            model,
            x,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=0.3,
            ignored_layers=_classifier(model),
        )
        record["trace_s"] = time.perf_counter() - start
        start = time.perf_counter()
        pruner.step()
        record["prune_s"] = time.perf_counter() - start
        record["params_kept"] = _params(model) / before
        record["ok"] = _runs(model, x) and _params(model) < before
    except Exception as exc:
        record["error"] = describe_exception(exc)
        record["traceback_tail"] = traceback.format_exc().splitlines()[-3:]
    return record


TOOLS = {"prunekit": run_prunekit, "torch_pruning": run_torch_pruning}


def _warm_up(tool: str) -> None:
    """Prune a small network once, so that imports and first-call costs are not timed."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.Flatten(),
        nn.LazyLinear(1000),
    )
    x = torch.randn(1, 3, 16, 16)
    net(x)
    if tool == "prunekit":
        prune(net.eval(), x, ratio=0.3)
    else:
        import torch_pruning as tp

        tp.pruner.MetaPruner(
            net.eval(),
            x,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=0.3,
            ignored_layers=[net[-1]],
        ).step()


def worker(tool: str, name: str, threads: int) -> None:
    torch.set_num_threads(threads)
    _warm_up(tool)
    print(json.dumps(TOOLS[tool](name)))


def run_isolated(tool: str, name: str, threads: int, timeout: float) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        tool,
        "--models",
        name,
        "--threads",
        str(threads),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        why = "killed (out of memory?)" if done.returncode < 0 else f"exit {done.returncode}"
        return {"ok": False, "error": f"{why}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def _total(r: dict[str, Any]) -> float | None:
    return r["trace_s"] + r["prune_s"] if r.get("ok") else None


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return f"{'-':>22}"
    if not r.get("ok"):
        return f"{'FAILED':>22}"
    return f"{r['trace_s']:7.2f} {r['prune_s']:6.2f} {r['params_kept']:6.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated subset (default: the whole zoo)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-peer", action="store_true", help="do not run Torch-Pruning")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/zoo.json"))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per tool and model")
    parser.add_argument("--worker", choices=tuple(TOOLS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.models, args.threads)
        return
    names = args.models.split(",") if args.models else zoo()
    rows = []
    for name in names:
        ours = run_isolated("prunekit", name, args.threads, args.timeout)
        peer = (
            None
            if args.skip_peer
            else run_isolated("torch_pruning", name, args.threads, args.timeout)
        )
        rows.append({"model": name, "prunekit": ours, "torch_pruning": peer})
        print(f"{name:22} prunekit {_cell(ours)} | torch-pruning {_cell(peer)}", flush=True)
    record = {"environment": environment(), "threads": args.threads, "ratio": 0.3, "models": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))

    print(
        f"\nrecord: {args.out}; times in seconds on {args.threads} threads (trace, prune), params kept"
    )
    print(f"{'model':22} {'prunekit':>22}   {'torch-pruning':>22}   {'time ratio':>10}")
    ratios = []
    for row in rows:
        ours, peer = row["prunekit"], row["torch_pruning"]
        ratio = ""
        if peer is not None and _total(ours) and _total(peer):
            ratios.append(_total(ours) / _total(peer))
            ratio = f"{ratios[-1]:9.2f}x"
        print(f"{row['model']:22} {_cell(ours)}   {_cell(peer)}   {ratio:>10}")
    for row in rows:
        for tool in ("prunekit", "torch_pruning"):
            r = row[tool]
            if r is not None and not r.get("ok"):
                print(
                    f"  {tool} failed on {row['model']}: {r.get('error', 'no parameter removed')}"
                )
    n = len(rows)
    ours_ok = sum(bool(r["prunekit"]["ok"]) for r in rows)
    peer_ok = sum(bool(r["torch_pruning"] and r["torch_pruning"]["ok"]) for r in rows)
    slowest = max(rows, key=lambda r: _total(r["prunekit"]) or 0)
    print(
        f"slowest prunekit model: {slowest['model']} {_total(slowest['prunekit']) or float('nan'):.2f} s (trace + prune)"
    )
    median = statistics.median(ratios) if ratios else float("nan")
    print(
        f"COVERAGE prunekit {ours_ok}/{n} torch-pruning {peer_ok}/{n}; TIME median ratio prunekit/torch-pruning {median:.2f}"
    )


if __name__ == "__main__":
    main()
