"""Does ``prunekit advise`` tell the truth? Its structured row against an independent ``bench``.

``prunekit advise`` times a pruned copy per kind of pruning interleaved with the dense model
inside one process. This benchmark checks its channel row from the outside, with nothing
shared but the pruning: ``prunekit prune MODEL --ratio R --out DIR`` writes the pruned
artifact, and ``prunekit bench`` times the dense model and that artifact in separate
processes, alternating (dense, pruned, pruned, dense, ...) so that a machine that drifts
during the run moves both alike. Each pair gives one speedup; the bench speedup is their
median and their range is the noise.

Twice: with the default glibc malloc, and with its dynamic mmap / trim thresholds fixed
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``). Why: a model timed alone in a fresh
process can pay page faults for freshly mmap'd activation buffers on every call, while inside
advise's process the dense model's larger buffers have already raised glibc's thresholds, so
the pruned copies are timed with a warm heap. The fixed-threshold bench removes that
difference; the default one shows what it costs a model deployed alone.

Prints advise's full table and recommendation, then per batch size: advise's speedup (with
its per-round range), bench's (with its per-pair range), their ratio, and whether they agree
(bar: within 10%, or advise's figure inside bench's per-pair range). Also checks that the
channel row's MACs kept equal ``prune.json``'s (the same model was timed).

    python benchmarks/advise.py                              # resnet18 at 160 px, ~10 minutes
    python benchmarks/advise.py --model mobilenet_v2 --pairs 7 --json runs/advise.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

AGREE = 0.10  # advise's speedup may differ from bench's by this much (relative)


# glibc malloc with its dynamic thresholds fixed: every freed activation buffer stays in the
# heap, so a process no longer pays page faults for fresh mmap'd buffers on every call
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32)}


def prunekit(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``prunekit ARGS --json`` in a fresh process; its JSON record."""
    command = [sys.executable, "-m", "prunekit", *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"`prunekit {' '.join(args)}` failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout)


def bench_pairs(dense: list[str], pruned: list[str], common: list[str], pairs: int,
                env: dict[str, str] | None = None) -> dict[int, dict[str, Any]]:  # fmt: skip
    """``pairs`` alternating bench runs of each model; per batch size the medians and the
    per-pair speedups."""
    per_batch: dict[int, dict[str, list[float]]] = {}
    for i in range(pairs):
        order = [("dense", dense), ("pruned", pruned)]
        if i % 2:
            order.reverse()  # neither model always runs first
        times: dict[str, dict[int, float]] = {}
        for name, source in order:
            record = prunekit("bench", *source, *common, env=env)
            times[name] = {r["batch_size"]: r["median_ms"] for r in record["results"]}
        for batch, dense_ms in times["dense"].items():
            slot = per_batch.setdefault(batch, {"dense": [], "pruned": [], "ratios": []})
            slot["dense"].append(dense_ms)
            slot["pruned"].append(times["pruned"][batch])
            slot["ratios"].append(dense_ms / times["pruned"][batch])
    return {
        batch: {
            "dense_ms": statistics.median(s["dense"]),
            "ms": statistics.median(s["pruned"]),
            "speedup": statistics.median(s["ratios"]),
            "range": [min(s["ratios"]), max(s["ratios"])],
            "ratios": s["ratios"],
        }
        for batch, s in per_batch.items()
    }


def agree(advised: float, bench: dict[str, Any]) -> bool:
    low, high = bench["range"]
    return abs(advised / bench["speedup"] - 1) <= AGREE or low <= advised <= high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--input-shape", default="1,3,160,160")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--ratio", type=float, default=0.5, help="the channel row checked (0.5)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="advise's interleaved rounds (5)")
    parser.add_argument("--pairs", type=int, default=5, help="alternating bench pairs (5)")
    parser.add_argument("--out", default="runs/bench-advise")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument("--no-fixed-malloc", action="store_true",
                        help="skip the second bench, with glibc malloc's thresholds fixed")  # fmt: skip
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = [args.model, "--input-shape", args.input_shape]
    timing = ["--batch-sizes", args.batch_sizes, "--threads", str(args.threads)]

    began = time.perf_counter()
    advised = prunekit("advise", *source, *timing, "--rounds", str(args.rounds))
    advise_s = time.perf_counter() - began
    rows = [r for r in advised["rows"] if r["strategy"] == "channels"
            and abs(r["level"] - args.ratio) < 1e-9]  # fmt: skip
    if not rows:
        sys.exit(f"advise has no channels row at {args.ratio:g}: {advised['rows']}")
    artifact = out / f"pruned-{args.ratio:g}"
    pruned = prunekit("prune", *source, "--ratio", str(args.ratio), "--out", str(artifact),
                      "--force")  # fmt: skip
    began = time.perf_counter()
    benches = {"default malloc": bench_pairs(source, [str(artifact)], timing, args.pairs)}
    if not args.no_fixed_malloc:
        benches["fixed malloc"] = bench_pairs(source, [str(artifact)], timing, args.pairs,
                                              FIXED_MALLOC)  # fmt: skip
    bench_s = time.perf_counter() - began

    print(f"{advised['model']} · {args.input_shape} · {advised['device_name']} · "
          f"{advised['threads']} threads · advise {args.rounds} rounds ({advise_s:.0f} s), "
          f"bench {args.pairs} alternating pairs per allocator setting ({bench_s:.0f} s)")  # fmt: skip
    print()
    print(f"{'strategy':<13} {'level':>5} {'kernel':<16} {'batch':>5} {'dense ms':>9} "
          f"{'ms':>9} {'speedup':>8}  MACs kept")  # fmt: skip
    for r in advised["rows"]:
        ms = "-" if r["ms"] is None else f"{r['ms']:.2f}"
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        kept = "-" if r["macs_kept"] is None else f"{r['macs_kept']:.1%}"
        print(f"{r['strategy']:<13} {r['level']:>5g} {r['kernel']:<16} {r['batch_size']:>5} "
              f"{r['dense_ms']:>9.2f} {ms:>9} {speed:>8}  {kept}")  # fmt: skip
    print(f"recommendation: {advised['recommendation']}")
    print()
    header = (f"{'bench process':<15} {'batch':>5} {'advise speedup':>20} {'bench speedup':>20} "
              f"{'bench dense/pruned ms':>22} {'advise/bench':>12}  agree")  # fmt: skip
    print(f"channels {args.ratio:.0%}: advise's row vs an independent `prunekit bench` "
          "(one process per model)")  # fmt: skip
    print(header)
    print("-" * len(header))
    checks: dict[str, list[bool]] = {}
    for setting, bench in benches.items():
        for r in rows:
            b = bench[r["batch_size"]]
            lo, hi = r["speedup_range"]
            ok = agree(r["speedup"], b)
            checks.setdefault(setting, []).append(ok)
            print(f"{setting:<15} {r['batch_size']:>5} {r['speedup']:>6.2f}x ({lo:.2f}-{hi:.2f}) "
                  f"{b['speedup']:>9.2f}x ({b['range'][0]:.2f}-{b['range'][1]:.2f}) "
                  f"{b['dense_ms']:>10.2f} / {b['ms']:<9.2f} "
                  f"{r['speedup'] / b['speedup']:>12.3f}  {'yes' if ok else 'NO'}")  # fmt: skip
    macs_same = abs(rows[0]["macs_kept"] - pruned["kept"]["macs"]) < 1e-9
    print()
    print(f"MACs kept: advise {rows[0]['macs_kept']:.4f}, prune.json {pruned['kept']['macs']:.4f}"
          f" ({'the same model' if macs_same else 'DIFFERENT models'})")  # fmt: skip
    for setting, ok in checks.items():
        print(f"advise vs bench ({setting}): {'agree' if all(ok) else 'DIFFER'} within noise "
              "(10% or inside bench's per-pair range)")  # fmt: skip
    bar = macs_same and any(all(ok) for ok in checks.values())
    print(f"bar: advise's structured row equals an independent bench within noise: "
          f"{'MET' if bar else 'NOT MET'}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({
            "advise": advised,
            "bench": {setting: {str(k): v for k, v in bench.items()}
                      for setting, bench in benches.items()},
            "prune_kept": pruned["kept"], "bar": bar, "args": vars(args),
        }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
