"""Output directories of prunekit commands written by hand, with round figures, so that the
report's arithmetic can be checked against values worked out on paper."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def verify_record(rows: list[tuple[int, float, float, float]], macs: tuple[int, int],
                  device: str = "cpu", gpu: str | None = None) -> dict[str, Any]:  # fmt: skip
    """``rows``: (batch, dense ms, pruned ms, median per-round speedup)."""
    ideal = macs[0] / macs[1]
    env = {"cpu": "Test CPU"} | ({"gpu": gpu} if gpu else {})
    return {
        "backend": "eager", "threads": 2, "device": device, "environment": env,
        "dense_macs": macs[0], "pruned_macs": macs[1], "ideal": ideal, "warn_below": 0.8,
        "rows": [{"batch_size": b, "dense_ms": d, "pruned_ms": p, "ideal": ideal, "speedup": s,
                  "measured": s, "of_ideal": s / ideal, "stable": True,
                  "speedup_range": [s * 0.98, s * 1.02], "ratios": [s] * 5}
                 for b, d, p, s in rows],
        "findings": [],
    }  # fmt: skip


def _evaluation(top1: float, samples: int = 1000) -> dict[str, Any]:
    split = {"seed": 0, "fit": 9000, "eval": samples, "eval_from": "the test split"}
    return {"task": "classification", "split": "eval", "samples": samples, "top1": top1,
            "data": {"spec": "digits", "split": split}}  # fmt: skip


def make_run(path: Path, *, dense_acc: float = 0.8, final_acc: float = 0.72,
             macs: tuple[int, int] = (1000, 400), params: tuple[int, int] = (500, 250),
             latency: list[tuple[int, float, float, float]] | None = None,
             device: str = "cpu", gpu: str | None = None,
             model: str = "pkg.mod:Net", sensitivity: bool = True) -> Path:  # fmt: skip
    """A ``prunekit run`` directory: run.json, evaluate/, verify/, prune/, sensitivity/."""
    latency = [(1, 4.0, 2.5, 1.6), (32, 40.0, 20.0, 2.0)] if latency is None else latency
    run = {
        "recipe": {"model": model, "data": "digits", "input_shape": "1,1,8,8",
                   "steps": [*(["sensitivity"] if sensitivity else []), "prune",
                             *(["verify"] if latency else []), "evaluate"]},
        "dense": {"accuracy": dense_acc, "macs": macs[0], "params": params[0]},
        "final": {"accuracy": final_acc, "macs": macs[1], "params": params[1]},
        "metric": "top1", "retention": final_acc / dense_acc, "latency": [],
        "data": {"spec": "digits", "split": {"eval_from": "the test split"}, "eval_samples": 1000},
    }  # fmt: skip
    _write(path / "run.json", run)
    _write(path / "evaluate" / "evaluate.json",
           {"dense": _evaluation(dense_acc), "final": _evaluation(final_acc)})  # fmt: skip
    if latency:
        _write(path / "verify" / "verify.json", verify_record(latency, macs, device, gpu))
    groups = [
        {"group": "conv1", "kept": 4, "total": 8},
        {"group": "conv2", "kept": 12, "total": 16},
    ]
    _write(path / "prune" / "prune.json", {"groups": groups, "before": {}, "after": {}})
    if sensitivity:
        points = [{"ratio": r, "kept": 1, "drop": r * r} for r in (0.25, 0.5, 0.75)]
        _write(path / "sensitivity" / "sensitivity.json",
               {"metric": "output_divergence", "groups": {"conv1": {"size": 8, "points": points},
                                                          "conv2": {"size": 16, "points": points}}})  # fmt: skip
    return path
