"""Microcontroller benchmark: LeNet-300-100 on Fashion-MNIST fitted into flash budgets.

For each budget (a compression ratio against the dense fp32 bytes), prunekit's method
(``prunekit.mcu.compress``: planned global sparsity, gradual pruning with distillation on
shifted images, dead-neuron removal, weight sharing, per-layer storage choice, candidates
compared on validation accuracy) runs side by side with the plain baseline every toolkit
offers (global gradual magnitude pruning with fine-tuning, int8 values, 4-bit relative
indices), both from the same dense model with the same number of epochs. Then a larger
784-1024-1024-10 network (~7.3 MB fp32) is fitted into 1 MB to show which candidate prunekit
picks.

Accuracy is integer-only inference on the 10,000 test images; flash and RAM come from
compiling the generated C (``-Os``, host compiler; code size differs per target, array
sizes do not).

    python benchmarks/mcu.py [--data-dir DIR] [--ratios 40,60,80] [--skip-large] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from prunekit.data.idx import FASHION_MNIST_DEBIAN_DIR
from prunekit.mcu.c_export import generate_c
from prunekit.mcu.compile import check_against_reference, find_c_compiler, measure_object
from prunekit.mcu.compress import (
    Candidate,
    Recipe,
    compress_to_budget,
    dense_accuracy,
    integer_accuracy,
    train_dense,
)
from prunekit.mcu.datasets import Splits, load_idx_splits

LENET = [784, 300, 100, 10]
LARGE = [784, 1024, 1024, 10]


def _fp32_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters()) * 4


def _row(
    label: str, cand: Candidate, data: Splits, dense_acc: float, dense_bytes: int
) -> dict[str, Any]:
    test = integer_accuracy(cand.qmodel, data.test_x, data.test_y)
    row: dict[str, Any] = {
        "method": label,
        "candidate": cand.name,
        "bytes": cand.bytes,
        "ratio": dense_bytes / cand.bytes,
        "nonzeros": cand.nonzeros,
        "val_accuracy": cand.val_accuracy,
        "test_accuracy": test,
        "delta_points": 100 * (test - dense_acc),
        "formats": [layer.format for layer in cand.report.layers],
        "shapes": [list(layer.shape) for layer in cand.report.layers],
    }
    if find_c_compiler() is not None:
        source = generate_c(cand.qmodel, cand.encodings)
        x = cand.qmodel.quantize_input(data.test_x.numpy())
        with tempfile.TemporaryDirectory() as tmp:
            sizes = measure_object(source, Path(tmp) / "object")
            check = check_against_reference(cand.qmodel, source, x, Path(tmp) / "check")
        row.update(flash=sizes.flash, ram=sizes.ram, code=sizes.text,
                   c_agreement=check.agreement, c_logits_identical=check.logits_identical,
                   c_samples=check.n)  # fmt: skip
    return row


def _agreement(row: dict[str, Any]) -> str:
    if "c_agreement" not in row:
        return "no cc"
    return f"{row['c_agreement']:.2%}" + ("" if row["c_logits_identical"] else "*")


def _print_rows(rows: list[dict[str, Any]], dense_bytes: int, dense_acc: float) -> None:
    print(f"\ndense fp32: {dense_bytes} bytes, test accuracy {dense_acc:.2%}")
    head = f"{'budget':>8} {'method':>9} {'values':>13} {'bytes':>7} {'ratio':>6} {'nnz':>6} {'test acc':>8} {'delta':>6} {'flash':>7} {'RAM':>5} {'C = Python':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['budget']:>8} {r['method']:>9} {r['candidate']:>13} {r['bytes']:>7} "
              f"{r['ratio']:>5.1f}x {r['nonzeros']:>6} {r['test_accuracy']:>8.2%} "
              f"{r['delta_points']:>+6.2f} {r.get('flash', '-'):>7} {r.get('ram', '-'):>5} "
              f"{_agreement(r):>10}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(FASHION_MNIST_DEBIAN_DIR))
    parser.add_argument(
        "--ratios", default="40,60,80", help="compression ratios vs fp32 ('' for none)"
    )
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="mcu_benchmark.json")
    parser.add_argument("--methods", default="plain,prunekit")
    parser.add_argument("--values", default="8,4,3", help="prunekit's candidate value bits")
    parser.add_argument("--prune-epochs", type=int, default=Recipe().prune_epochs)
    parser.add_argument("--finetune-epochs", type=int, default=Recipe().finetune_epochs)
    parser.add_argument("--sharing-epochs", type=int, default=Recipe().sharing_epochs)
    parser.add_argument("--neuron-exponent", type=float, default=Recipe().neuron_exponent)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = load_idx_splits("fashion-mnist", args.data_dir)
    print(data.describe(), flush=True)
    recipe = Recipe(
        neuron_exponent=args.neuron_exponent,
        prune_epochs=args.prune_epochs,
        finetune_epochs=args.finetune_epochs,
        sharing_epochs=args.sharing_epochs,
    )
    value_bits = tuple(int(b) for b in args.values.split(","))
    dense = train_dense(LENET, data, recipe, log=print)
    dense_acc, dense_bytes = dense_accuracy(dense, data), _fp32_bytes(dense)
    rows: list[dict[str, Any]] = []
    for ratio in [float(r) for r in args.ratios.split(",") if r]:
        budget = int(dense_bytes / ratio)
        for method in args.methods.split(","):
            print(f"\n== {ratio:g}x = {budget} bytes, {method}", flush=True)
            result = compress_to_budget(
                dense, data, budget, recipe, value_bits, method=method, log=print
            )
            for cand in result.candidates:
                row = _row(method, cand, data, dense_acc, dense_bytes)
                row.update(budget=f"{ratio:g}x", budget_bytes=budget, chosen=cand is result.best)
                rows.append(row)
        _print_rows(rows, dense_bytes, dense_acc)
    record: dict[str, Any] = {"dense": {"accuracy": dense_acc, "bytes": dense_bytes}, "rows": rows}
    if not args.skip_large:
        large_recipe = Recipe(dense_epochs=12, prune_epochs=9, finetune_epochs=5, sharing_epochs=2)
        large = train_dense(LARGE, data, large_recipe, log=print)
        large_acc, large_bytes = dense_accuracy(large, data), _fp32_bytes(large)
        budget = 1024**2
        result = compress_to_budget(large, data, budget, large_recipe, log=print)
        large_rows = []
        for cand in result.candidates:
            row = _row("prunekit", cand, data, large_acc, large_bytes)
            row.update(budget="1MB", budget_bytes=budget, chosen=cand is result.best)
            large_rows.append(row)
        record["large"] = {
            "dense": {"accuracy": large_acc, "bytes": large_bytes},
            "rows": large_rows,
        }
        print("\n784-1024-1024-10 into 1 MB (candidates; '*' = picked by validation accuracy)")
        _print_rows(large_rows, large_bytes, large_acc)
        for r in large_rows:
            print(f"  {'*' if r['chosen'] else ' '} {r['candidate']}: val {r['val_accuracy']:.2%}")
    Path(args.out).write_text(json.dumps(record, indent=2))
    print("\nsummary (integer test accuracy delta vs dense, at equal budgets):")
    for ratio in sorted({r["budget"] for r in rows}, key=lambda b: float(b[:-1])):
        plain = [r for r in rows if r["budget"] == ratio and r["method"] == "plain"]
        ours = [
            r for r in rows if r["budget"] == ratio and r["method"] == "prunekit" and r["chosen"]
        ]
        line = f"  {ratio}:"
        if ours:
            line += f" prunekit {ours[0]['ratio']:.1f}x {ours[0]['delta_points']:+.2f} pts ({ours[0]['candidate']})"
        if plain:
            line += f" | plain {plain[0]['ratio']:.1f}x {plain[0]['delta_points']:+.2f} pts"
        if ours and plain:
            line += f" | prunekit - plain: {ours[0]['delta_points'] - plain[0]['delta_points']:+.2f} pts"
        print(line)
    print(f"total time {time.perf_counter() - start:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
