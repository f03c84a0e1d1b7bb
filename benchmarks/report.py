"""The management report of three runs side by side: two planned budgets and a uniform baseline.

On Fashion-MNIST, the mobile-CNN tutorial's recipe (``docs/tutorials/mobile-cnn.yaml``) runs
three times from one trained dense model:

- ``planned-50``: train, sensitivity, a plan for 50% of the MACs, prune, fine-tune with
  distillation, verify, evaluate (the tutorial itself);
- ``planned-35``: the same dense model, a plan for 35% of the MACs;
- ``uniform-50``: the same dense model, one pruning ratio for every group to 50% of the MACs
  (no sensitivity, no plan), the same fine-tune.

Then ``prunekit report`` writes the page comparing them (``--cost`` as given; default an L4 at
100 QPS and 60% utilisation) and this script prints the headline rows from report.json and a
screenshot of the page when Chromium is installed.

    python benchmarks/report.py [--out runs/bench-report] [--report docs/report-example]
                                [--cost gpu=L4,qps=100,utilization=0.6]

A rerun reuses finished steps (delete --out to start over).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorials" / "mobile-cnn.yaml"


def _recipes(out: Path) -> dict[str, dict[str, Any]]:
    base = yaml.safe_load(TUTORIAL.read_text())
    dense = str(out / "planned-50" / "train")
    later = {k: v for k, v in base.items() if k != "train"}
    return {
        "planned-50": base,
        "planned-35": {**later, "model": dense, "target": "macs=0.35",
                       "steps": [s for s in base["steps"] if s != "train"]},
        "uniform-50": {**later, "model": dense, "target": "macs=0.5",
                       "steps": [s for s in base["steps"] if s not in ("train", "sensitivity", "plan")]},
    }  # fmt: skip


def _row(label: str, cells: list[str]) -> str:
    return f"{label:30}" + "".join(f"{c:>16}" for c in cells)


def _pct(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-report")
    parser.add_argument("--report", default="runs/bench-report-page")
    parser.add_argument("--cost", action="append", default=None)
    parser.add_argument("--screenshot", metavar="PNG", help="default: REPORT.png beside --report")
    args = parser.parse_args()

    from prunekit.api.run import run_recipe
    from prunekit.cli.main import main as prunekit

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for name, recipe in _recipes(out).items():
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        start = time.perf_counter()
        run_recipe(path, out / name, log=lambda m: print(m, file=sys.stderr, flush=True))
        seconds[name] = time.perf_counter() - start
    names = list(seconds)
    argv = ["report", *[str(out / n) for n in names], "--out", args.report, "--force",
            "--title", "Mobile CNN on Fashion-MNIST: two planned budgets and a uniform baseline"]  # fmt: skip
    for spec in args.cost or ["gpu=L4,qps=100,utilization=0.6"]:
        argv += ["--cost", spec]
    if prunekit(argv) != 0:
        return 1
    report = json.loads((Path(args.report) / "report.json").read_text())
    runs = report["runs"]
    print(
        f"\nheld out: {runs[0]['accuracy']['samples']} samples ({runs[0]['accuracy']['split_from']})"
    )
    print(_row("", names))
    print(_row("top-1, dense", [f"{r['accuracy']['dense']:.4f}" for r in runs]))
    print(_row("top-1, final", [f"{r['accuracy']['final']:.4f}" for r in runs]))
    print(_row("retention", [_pct(r["retention"]) for r in runs]))
    print(_row("MACs cut", [_pct(r["macs"]["reduction"]) for r in runs]))
    print(_row("parameters cut", [_pct(r["params"]["reduction"]) for r in runs]))
    for i, row in enumerate(runs[0]["latency"]):
        b = row["batch_size"]
        print(_row(f"batch {b}: dense -> final ms",
                   [f"{r['latency'][i]['dense_ms']:.3f}->{r['latency'][i]['final_ms']:.3f}" for r in runs]))  # fmt: skip
        print(_row(f"batch {b}: speedup (ideal)",
                   [f"{r['latency'][i]['speedup']:.2f}x ({r['latency'][i]['ideal']:.2f}x)" for r in runs]))  # fmt: skip
        print(_row(f"batch {b}: median stable", [str(r["latency"][i]["stable"]) for r in runs]))
    for r in runs[:1]:
        c = r["cost"]
        print(f"cost: {c['gpu']} ${c['price_per_hour']}/h, {c['qps']:g} QPS, "
              f"{c['utilization']:.0%} utilisation, batch {c['batch_size']}")  # fmt: skip
    print(_row("annual GPU cost, dense", [f"${r['cost']['annual_dense']:,.0f}" for r in runs]))
    print(_row("annual GPU cost, final", [f"${r['cost']['annual_final']:,.0f}" for r in runs]))
    print(_row("annual saving", [f"${r['cost']['annual_saving']:,.0f}" for r in runs]))
    print("wall time per run (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    shot = Path(args.screenshot or f"{args.report.rstrip('/')}.png")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                            f"--user-data-dir={profile}", f"--screenshot={shot.resolve()}",
                            "--window-size=1200,1500", "--hide-scrollbars",
                            (Path(args.report) / "report.html").resolve().as_uri()],
                           capture_output=True, check=False, timeout=120)  # fmt: skip
        print(f"screenshot: {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
