"""One-shot 95% unstructured sparsity collapses a segmentation net; gradual + sensitivity fixes it.

A U-Net (``prunekit.nn.unet``) is trained here on the fit part of the ``scenes-masks`` data spec
(``prunekit.data.scenes``: objects with exact masks composited over real photographs; fit and
eval scenes use disjoint regions of the photographs), then sparsified to the same sparsity
through ``pk.sparsify_`` in four ways. Every fine-tune trains on the fit scenes only,
distilling from the dense net (a seeded 10% of the fit scenes picks the epoch, and measures the
per-layer sensitivity curves); Dice, mIoU and pixel accuracy come from the held-out eval
scenes, never trained or chosen on:

* one-shot global magnitude, no fine-tune (the raw cut);
* one-shot global magnitude + a short fine-tune;
* gradual (cubic ramp) uniform + the same short fine-tune;
* gradual with per-layer sensitivity allocation + a longer fine-tune (the fix);
* one-shot global magnitude + the same longer fine-tune (is it the schedule and allocation,
  or only the training length?).

If one-shot (+ the short fine-tune) does not lose 20 Dice points at the target, 97%, 98% and 99%
are tried until it does, and the level is named. ``--control`` adds the dense net fine-tuned as
long as the fix (is the fix's Dice the sparsity's or the extra training's?).

Prints one table and the bar, writes ``results.json``, ``README-snippet.md`` and the diagnosis
pictures (``prunekit.sparsity.diagnose``) of one held-out scene into ``--out``. The trained
dense net is cached there (``dense-*.pt``) and reused, as are the sensitivity curves.

    python benchmarks/segmentation_sparsity.py            # ~70 min on 2 cores (25 once the dense net is cached)
    python benchmarks/segmentation_sparsity.py --quick    # a smoke run, under 2 minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import prunekit as pk
from prunekit.api.sparsify import SparsifyConfig, sparsify_
from prunekit.data.specs import Data, load_data
from prunekit.nn.unet import unet

COLLAPSE = 0.20  # Dice lost by one-shot that counts as a collapse
WITHIN = 0.02  # Dice the fix may lose
SWEEP = (0.97, 0.98, 0.99)


def scores(model: nn.Module, data: Data) -> dict[str, Any]:
    result = pk.evaluate(model, data)
    return {k: result[k] for k in ("dice", "miou", "pixel_accuracy", "samples", "split")}


def train_dense(data: Data, epochs: int, cache: Path, log: Any) -> tuple[nn.Module, float]:
    torch.manual_seed(0)
    model = unet(num_classes=5, width=16, depth=3)
    if cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
        log(f"dense U-Net: loaded {cache} (delete it to train again)")
        return model.eval(), 0.0
    config = pk.RecoverConfig(epochs=epochs, lr=3e-3, optimizer="adamw", batch_size=32,
                              weight_decay=1e-4)  # fmt: skip
    began = time.perf_counter()
    pk.recover_(model, data, config, log=lambda line: log(f"  [dense] {line}"))
    spent = time.perf_counter() - began
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model.eval(), spent


def sparsified(
    dense: nn.Module, data: Data, label: str, log: Any, *, sensitivity: Path | None = None,
    **settings: Any,
) -> dict[str, Any]:  # fmt: skip
    model = copy.deepcopy(dense)
    config = SparsifyConfig(optimizer="adamw", lr=1e-3, batch_size=32, **settings)
    record: dict[str, Any] = {}
    sparsify_(model, config, data=data, teacher=dense, sensitivity=sensitivity,
              example=data.eval[0][0].unsqueeze(0), record=record,
              log=lambda line: log(f"  [{label}] {line}"))  # fmt: skip
    row = {"label": label, "model": model, "sparsity": record["sparsity"],
           "seconds": record["seconds"], "record": record, **scores(model, data)}  # fmt: skip
    log(f"{label}: sparsity {row['sparsity']:.4f}, Dice {row['dice']:.4f} (held out)")
    return row


def fine_tuned_dense(dense: nn.Module, data: Data, epochs: int, log: Any) -> dict[str, Any]:
    """The control: the dense net trained as long as the fix, distilling from itself."""
    model = copy.deepcopy(dense)
    config = pk.RecoverConfig(epochs=epochs, lr=1e-3, optimizer="adamw", batch_size=32,
                              weight_decay=0.0)  # fmt: skip
    began = time.perf_counter()
    pk.recover_(model, data, config, teacher=dense, log=lambda line: log(f"  [control] {line}"))
    model.eval()
    return {"label": "control: dense + long fine-tune", "model": model, "sparsity": 0.0,
            "seconds": time.perf_counter() - began, "record": {}, **scores(model, data)}  # fmt: skip


def most_changed_image(dense: nn.Module, variant: nn.Module, data: Data, count: int) -> int:
    """The held-out scene (among the first ``count``) whose predicted classes the variant
    changed at the most pixels: the one worth diagnosing."""
    images = torch.stack([data.eval[i][0] for i in range(min(count, len(data.eval)))])
    with torch.no_grad():
        changed = dense(images).argmax(1) != variant(images).argmax(1)
    return int(changed.flatten(1).sum(1).argmax())


def table(base: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    header = (f"{'row':<44} {'sparsity':>8} {'Dice':>7} {'drop (pts)':>10} {'mIoU':>7} "
              f"{'steps':>6} {'fine-tune s':>11}")  # fmt: skip
    lines = [header, "-" * len(header)]
    lines.append(f"{'dense':<44} {0:>8.3f} {base['dice']:>7.4f} {0:>10.1f} {base['miou']:>7.4f} "
                 f"{'':>6} {'':>11}")  # fmt: skip
    for row in rows:
        drop = (base["dice"] - row["dice"]) * 100
        # optimiser steps, not seconds, say how long each fine-tune was: the wall time also
        # says how busy the machine was
        steps = ((row.get("record") or {}).get("finetune") or {}).get("steps", 0)
        lines.append(f"{row['label']:<44} {row['sparsity']:>8.3f} {row['dice']:>7.4f} "
                     f"{drop:>10.1f} {row['miou']:>7.4f} {steps:>6} {row['seconds']:>11.0f}")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="scene side in pixels (64)")
    parser.add_argument("--fit", type=int, default=2000, help="fit scenes (2000)")
    parser.add_argument("--eval", type=int, default=300, help="held-out eval scenes (300)")
    parser.add_argument("--train-epochs", type=int, default=40,
                        help="epochs to train the dense U-Net (40; cached)")  # fmt: skip
    parser.add_argument("--short", type=int, default=3, help="epochs of the short fine-tune (3)")
    parser.add_argument("--long", type=int, default=25, help="epochs of the long fine-tune (25)")
    parser.add_argument("--ramp", type=float, default=0.6,
                        help="share of the long fine-tune the fix ramps over; the rest "
                        "fine-tunes at the final sparsity (0.6)")  # fmt: skip
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--control", action="store_true",
                        help="also fine-tune the dense net for --long epochs (a control)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/segmentation_sparsity")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 200 fit / 50 eval scenes of 48 px, seconds-long trainings")  # fmt: skip
    args = parser.parse_args()
    samples = 128  # validation scenes the sensitivity curves are measured on
    if args.quick:
        args.size, args.fit, args.eval, args.train_epochs = 48, 200, 50, 3
        args.short, args.long, samples = 1, 2, 16
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    log = print
    data = load_data(f"scenes-masks:{args.fit},{args.eval}", image_size=args.size)
    tag = f"unet-{args.size}-{args.fit}-{args.train_epochs}ep"
    dense, train_s = train_dense(data, args.train_epochs, out / f"dense-{tag}.pt", log)
    base = scores(dense, data)
    log(f"dense U-Net: Dice {base['dice']:.4f}, mIoU {base['miou']:.4f} on {base['samples']} "
        "held-out scenes")  # fmt: skip
    s = args.sparsity
    short = {"sparsity": s, "epochs": args.short}
    rows = [
        sparsified(dense, data, f"one-shot {s:.0%} global, no fine-tune", log, sparsity=s),
        sparsified(dense, data, f"one-shot {s:.0%} global + short fine-tune", log, **short),
        sparsified(dense, data, f"gradual {s:.0%} uniform + short fine-tune", log, **short,
                   schedule="gradual", allocation="uniform"),
        sparsified(dense, data, f"gradual {s:.0%} sensitivity + long fine-tune", log,
                   sensitivity=out / f"sensitivity-{tag}.json", sparsity=s, epochs=args.long,
                   schedule="gradual", allocation="sensitivity", sensitivity_samples=samples,
                   ramp=args.ramp),
        # the fix's training length without its schedule and allocation: which one helps?
        sparsified(dense, data, f"one-shot {s:.0%} global + long fine-tune", log, sparsity=s,
                   epochs=args.long),
    ]  # fmt: skip
    raw, oneshot, fix = rows[0], rows[1], rows[3]
    raw_loss = base["dice"] - raw["dice"]
    collapse = base["dice"] - oneshot["dice"]
    # where does one-shot still collapse once it is fine-tuned as briefly as the gradual row?
    found = s if collapse > COLLAPSE else None
    for level in SWEEP:
        if found is not None or level <= s:
            continue
        row = sparsified(dense, data, f"one-shot {level:.0%} global + short fine-tune", log,
                         sparsity=level, epochs=args.short)  # fmt: skip
        rows.append(row)
        if base["dice"] - row["dice"] > COLLAPSE:
            found = level
    if args.control:
        rows.append(fine_tuned_dense(dense, data, args.long, log))
    lost = base["dice"] - fix["dice"]
    where = (f"at {found:.0%}" if found is not None
             else f"at no level tried (up to {max(SWEEP):.0%})")  # fmt: skip
    bar_collapse = raw_loss > COLLAPSE
    bar_fix = lost <= WITHIN
    sens_s = (fix["record"].get("sensitivity") or {}).get("seconds")
    notes = [
        f"Dice, mIoU: on {base['samples']} held-out eval scenes ({args.size} px; photo regions "
        f"disjoint from the fit scenes'); every training on {args.fit} fit scenes (a seeded 10% "
        "of them pick the epoch and measure the sensitivity curves)",
        f"dense U-Net (width 16, depth 3): trained {args.train_epochs} epochs"
        + (f" ({train_s:.0f} s, this run)" if train_s else " (cached)"),
        f"fine-tunes: short = {args.short} epochs, long = {args.long} epochs (the fix ramps "
        f"over the first {args.ramp:.0%}), distilling from the dense net",
        "fine-tune s: pruning + fine-tuning wall time; the sensitivity curves took "
        + (f"{sens_s:.0f} s more" if sens_s is not None else "no time (read from the file)"),
        f"bar: one-shot {s:.0%} loses {raw_loss * 100:.1f} Dice points (> {COLLAPSE * 100:.0f}): "
        f"{'MET' if bar_collapse else 'NOT MET'}; after the short fine-tune it loses "
        f"{collapse * 100:.1f}, and one-shot + short fine-tune loses > {COLLAPSE * 100:.0f} {where}",
        f"bar: gradual + sensitivity at {s:.0%} loses {lost * 100:.1f} Dice points: "
        f"{'MET' if bar_fix else 'NOT MET'} (within {WITHIN * 100:.0f})",
    ]
    lines = table(base, rows)
    print()
    print("\n".join(lines))
    print()
    print("\n".join(notes))

    results = {
        "data": data.to_dict(), "size": args.size, "dense": base, "dense_train_epochs":
        args.train_epochs, "dense_train_seconds": train_s or None, "one_shot_collapse_level": found, "bar": {"collapse": bar_collapse,
        "fix_within": bar_fix, "fix_lost_points": lost * 100},
        "rows": [{k: v for k, v in row.items() if k not in ("model", "record")} | {"record": {
            k: row["record"].get(k) for k in ("sparsity", "schedule", "allocation", "layers",
            "sensitivity", "ramp_completed", "finetune")}} for row in rows],
        "seconds": time.perf_counter() - began, "args": vars(args),
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    snippet = [
        f"**Segmentation at {s:.0%} unstructured sparsity** "
        "(`python benchmarks/segmentation_sparsity.py`): a small U-Net trained on the generated "
        f"`scenes-masks` data ({args.fit} fit scenes, {args.size} px), Dice measured on "
        f"{base['samples']} held-out scenes.",
        "",
        "```text",
        *lines,
        "```",
        "",
        *[f"- {note}" for note in notes],
        "",
    ]
    (out / "README-snippet.md").write_text("\n".join(snippet))

    # the diagnosis: one held-out scene, dense vs one-shot vs the fix
    from prunekit.sparsity.diagnose import write_diagnosis

    index = most_changed_image(dense, oneshot["model"], data, 32)
    variants = {f"one-shot {s:.0%}": oneshot["model"], f"gradual+sensitivity {s:.0%}": fix["model"]}
    paths = write_diagnosis(dense, variants, data.eval[index][0], out / "diagnosis")
    print(f"diagnosis of eval scene {index}: " + ", ".join(str(p) for p in paths))
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
