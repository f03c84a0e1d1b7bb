"""``prunekit prune HF_DIR --heads R [--ffn R] [--layers N] --out DIR``: the transformer path.

Layers, attention heads and FFN neurons go by data-driven importance measured on sentences
(``--data``, one per line; default: prunekit's built-in set); the result is a Hugging Face
directory (``AutoModel.from_pretrained(DIR, trust_remote_code=True)``, or prunekit without
remote code) with the tokenizer and a ``prune.json`` record.

The sentences are split first (seeded; ``--eval-fraction`` of them, at least ``MIN_EVAL``
when there are enough, held out): importance, the refit and the distillation see only the
fit part, and the reported fidelity is measured on the held-out part alone (a model scored
on the sentences it was distilled on looks better than it is). ``prune.json`` records the
split and what stopped the distillation.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prunekit.cli._common import load_from_args, print_json, say


def add_arguments(parser: argparse.ArgumentParser, amount: Any) -> None:
    amount.add_argument("--heads", type=float, metavar="R",
                        help="transformers: fraction of all attention heads to remove")  # fmt: skip
    parser.add_argument("--ffn", type=float, default=0.0, metavar="R",
                        help="transformers: fraction of all FFN neurons to remove")  # fmt: skip
    parser.add_argument("--layers", type=int, default=0, metavar="N",
                        help="transformers: drop the N least important encoder layers")  # fmt: skip
    parser.add_argument("--data", metavar="FILE",
                        help="transformers: sentences, one per line, to measure importance on "
                        "(default: prunekit's built-in set)")  # fmt: skip
    parser.add_argument("--criterion", default="importance",
                        choices=("importance", "magnitude", "random"),
                        help="transformers: how heads / neurons / layers are ranked")  # fmt: skip
    for kind, what in (("head", "heads"), ("ffn", "FFN neurons")):
        # default None: TransformerPruning's own default applies (prunekit.pruning.transformer)
        parser.add_argument(f"--{kind}-allocation", choices=("global", "uniform"),
                            help=f"transformers: how many {what} each layer keeps: global "
                            "ranks all layers' scores together, uniform cuts every layer by "
                            "the same fraction")  # fmt: skip
    parser.add_argument("--no-reconstruct", dest="reconstruct", action="store_false",
                        help="transformers: skip the least-squares refit of the projections "
                        "that read removed heads / neurons (on by default, seconds)")  # fmt: skip
    parser.add_argument("--distill-seconds", type=float, default=0.0, metavar="S",
                        help="transformers: distil the dense model's embeddings (and, unless "
                        "--layers drops layers, every layer's token hidden states) on --data "
                        "for up to S seconds after pruning (0: no recovery)")  # fmt: skip
    parser.add_argument("--eval-fraction", type=float, default=0.2, metavar="F",
                        help="transformers: share of the sentences held out to measure "
                        f"fidelity on, never used to prune, refit or distil (default 0.2; at "
                        f"least {MIN_EVAL} sentences when there are twice as many)")  # fmt: skip
    parser.add_argument("--split-seed", type=int, default=0, metavar="N",
                        help="transformers: seed of the fit / held-out split (default 0)")  # fmt: skip
    # default None: distill_embeddings' DEFAULT_LR applies (importing it here would load torch)
    parser.add_argument("--distill-lr", type=float, metavar="LR",
                        help="transformers: distillation learning rate (default: "
                        "embedding_distill.DEFAULT_LR; on MiniLM at 600 s, 8e-4 suits half the "
                        "heads and half the FFN)")  # fmt: skip


# held-out sentences: at least this many when the data has twice as many (a Spearman
# correlation over a dozen sentences says little)
MIN_EVAL = 48
# the distillation runs until --distill-seconds: the epoch limit is only a backstop
DISTILL_MAX_EPOCHS = 100_000
# Sentences the refit uses: on MiniLM with half its heads, one-shot Spearman 0.847 went to
# 0.876 with 1024 and 0.883 with 2048 (256 gave no gain); each costs a few passes.
RECONSTRUCT_SENTENCES = 2048
# --data is sampled down to this many sentences (memory stays bounded whatever the file's size;
# 50,000 sentences of 128 tokens are 150 MB of token ids and masks)
MAX_SENTENCES = 50_000
# the teacher's hidden states are kept (not recomputed every step) when they fit in this
CACHE_BYTES = 2 * 1024**3


def dense_after_layer_drop(dense: Any, result: Any) -> Any:
    """The dense model with the same layers dropped, so that module names line up with the
    pruned model's (the refit's targets are the dense layers' outputs)."""
    if not result.dropped_layers:
        return dense
    import copy

    from prunekit.criteria.layer_importance import drop_layers

    reference = copy.deepcopy(dense)
    drop_layers(reference, result.dropped_layers)
    return reference


def split_sentences(
    sentences: list[str], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(fit, held out): a seeded random ``fraction`` of the sentences held out (at least
    ``MIN_EVAL`` when there are twice as many, at least 3), both parts in their original order."""
    from prunekit.errors import InputSpecError

    n = len(sentences)
    if n < 4:
        raise InputSpecError(
            f"the transformer path needs at least 4 sentences (3 held out to measure fidelity), "
            f"got {n}"
        )
    from prunekit.data.specs import seeded_split

    count = max(round(fraction * n), min(MIN_EVAL, n // 2), 3)
    fit, held = seeded_split(sentences, fraction, seed, "--data", held=count)
    return fit, held


def wants_transformer_path(args: argparse.Namespace) -> bool:
    return args.heads is not None or bool(args.ffn) or bool(args.layers)


def run(args: argparse.Namespace, out: Any) -> int:
    """``out``: the output directory, checked by ``prune`` before any work."""
    import copy

    import torch

    from prunekit.data import sample_sentences
    from prunekit.errors import InputSpecError
    from prunekit.evaluate.embedding import embed, fidelity, sentence_batches
    from prunekit.hf import save_pretrained_pruned
    from prunekit.measure.params import count_params
    from prunekit.pruning.transformer import TransformerPruning, prune_transformer
    from prunekit.recovery.embedding_distill import DEFAULT_LR, distill_embeddings
    from prunekit.recovery.reconstruct import reconstruct_linears

    if args.ratio is not None or args.target or args.plan:
        raise InputSpecError(
            "--heads/--ffn/--layers cannot be combined with --ratio/--target/--plan"
        )
    allocations = {f"{kind}_allocation": getattr(args, f"{kind}_allocation")
                   for kind in ("head", "ffn") if getattr(args, f"{kind}_allocation")}  # fmt: skip
    config = TransformerPruning(heads=args.heads or 0.0, ffn=args.ffn, layers=args.layers,
                                criterion=args.criterion, **allocations)  # fmt: skip
    if args.distill_seconds < 0:
        raise InputSpecError("--distill-seconds must be >= 0")
    distill_lr = DEFAULT_LR if args.distill_lr is None else args.distill_lr
    if distill_lr <= 0:
        raise InputSpecError("--distill-lr must be > 0")
    if not 0 < args.eval_fraction < 1:
        raise InputSpecError(f"--eval-fraction must be between 0 and 1, got {args.eval_fraction}")
    sentences, total = sample_sentences(args.data, MAX_SENTENCES)
    if total > len(sentences):
        say(f"--data holds {total:,} sentences: using a random {len(sentences):,} of them "
            "(seed 0, in file order), the most this path keeps in memory")  # fmt: skip
    fit_sentences, eval_sentences = split_sentences(sentences, args.eval_fraction,
                                                    args.split_seed)  # fmt: skip
    source_name = args.data or "prunekit's built-in sentences"
    split = {"seed": args.split_seed, "fit": len(fit_sentences), "eval": len(eval_sentences),
             "eval_from": f"a random {len(eval_sentences)} of the {len(sentences)} sentences of "
             f"{source_name} (seed {args.split_seed}); never used for importance, refit or "
             "distillation"}  # fmt: skip
    source = Path(args.model)
    if not source.is_dir():
        raise InputSpecError(
            f"{args.model}: --heads/--ffn/--layers prune a Hugging Face model directory "
            "(with its tokenizer)"
        )
    from prunekit.hf.export import tokenizer_files

    tokenizer_files(source)  # the export copies them: missing ones must stop us now, not later
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except Exception as exc:
        raise InputSpecError(
            f"{source}: no tokenizer to encode the sentences with ({exc})"
        ) from None
    loaded = load_from_args(args)
    model = loaded.model.eval()
    length = args.seq_len or 128
    dense = copy.deepcopy(model)
    before = count_params(model).params
    calibration = sentence_batches(tokenizer, fit_sentences[:64], 16, length)
    example = dict(tokenizer(fit_sentences[0], return_tensors="pt"))  # unpadded: heads traceable
    macs_before = _macs(model, example)
    result = prune_transformer(model, example, calibration, config, log=say)
    say(f"sentences: {len(fit_sentences)} to prune, refit and distil on, {len(eval_sentences)} "
        f"held out to measure fidelity (seed {args.split_seed})")  # fmt: skip
    refits = []
    if args.reconstruct and (config.heads or config.ffn):
        batches = sentence_batches(tokenizer, fit_sentences[:RECONSTRUCT_SENTENCES], 16, length)
        refits = reconstruct_linears(model, dense_after_layer_drop(dense, result), batches)
        say(f"refitted {len(refits)} projections: mean relative error "
            f"{sum(r.error_before for r in refits) / len(refits):.3f} -> "
            f"{sum(r.error_after for r in refits) / len(refits):.3f}")  # fmt: skip
    distillation = None
    if args.distill_seconds:
        # batches of sentences of similar length: little padding, more sentences per second
        batches = sentence_batches(tokenizer, sorted(fit_sentences, key=len), 32, length)
        # token hidden states are matched layer by layer, which needs the teacher's depth
        hidden = 0.0 if config.layers else 1.0
        settings: Any = dense.config
        states = (int(settings.num_hidden_layers) + 1) * int(settings.hidden_size) * 2  # fp16
        tokens = sum(int(b["attention_mask"].numel()) for b in batches)
        done = distill_embeddings(model, dense, batches, epochs=DISTILL_MAX_EPOCHS,
                                  time_budget_s=args.distill_seconds, lr=distill_lr,
                                  hidden_weight=hidden,
                                  cache_teacher=tokens * states < CACHE_BYTES, log=say)  # fmt: skip
        model.eval()
        distillation = {"stopped_by": done.stopped_by, "seconds": done.seconds,
                        "steps": done.steps, "epochs": done.epochs,
                        "first_loss": done.first_loss, "last_loss": done.last_loss}  # fmt: skip
        limit = (f"the time budget ({args.distill_seconds:g} s)" if done.stopped_by == "time"
                 else f"the epoch limit ({DISTILL_MAX_EPOCHS:,} epochs)")  # fmt: skip
        say(f"distillation stopped by {limit} after {done.seconds:.1f} s, {done.steps} steps "
            f"({done.epochs:.2f} epochs of {len(fit_sentences)} sentences): loss "
            f"{done.first_loss:.4f} -> {done.last_loss:.4f}")  # fmt: skip
    with torch.no_grad():
        quality = fidelity(embed(dense, tokenizer, eval_sentences, max_length=length),
                           embed(model, tokenizer, eval_sentences, max_length=length))  # fmt: skip
    record = {
        "model": loaded.name,
        "config": {"heads": config.heads, "ffn": config.ffn, "layers": config.layers,
                   "criterion": config.criterion, "head_allocation": config.head_allocation,
                   "ffn_allocation": config.ffn_allocation,
                   "distill_seconds": args.distill_seconds, "distill_lr": distill_lr,
                   "reconstruct": bool(refits)},
        "reconstruction": [vars(r) for r in refits],
        **result.to_dict(),
        "params": {"before": before, "after": count_params(model).params},
        # MACs of one forward pass over the example sentence (its own length, unpadded)
        "macs": {"before": macs_before, "after": _macs(model, example),
                 "tokens": int(example["input_ids"].shape[-1])},
        "fidelity": {**quality, "split": "eval"},
        "split": split,
        "distillation": distillation,
        "sentences": len(sentences),
        "sentences_in_data": total,
    }  # fmt: skip
    # drop_layers renumbered the layers and the config: the record keeps the original indices
    save_pretrained_pruned(model, out, tokenizer_dir=source, extra_files={"prune.json": record})
    if args.json:
        print_json(record)
        return 0
    print(f"{loaded.name}: heads per layer {result.heads_before} -> {result.heads}")
    if config.ffn:
        print(f"FFN neurons per layer {result.ffn_before} -> {result.ffn}")
    if result.dropped_layers:
        print(f"dropped layers {result.dropped_layers}")
    p = record["params"]
    print(f"parameters {p['before']:,} -> {p['after']:,} ({p['after'] / p['before']:.1%})")
    pairs = (f" (pairs of a random {quality['spearman_sentences']:,})"
             if quality["spearman_sentences"] < len(eval_sentences) else "")  # fmt: skip
    print(f"fidelity on {len(eval_sentences)} held-out sentences (not used to prune, refit or "
          f"distil): mean cosine {quality['mean_cosine']:.4f}, Spearman of pairwise "
          f"similarities{pairs} {quality['spearman']:.4f}")  # fmt: skip
    print(
        f"wrote {args.out}/ (Hugging Face directory: AutoModel.from_pretrained(DIR, "
        "trust_remote_code=True); prune.json)"
    )
    return 0


def _macs(model: Any, example: dict[str, Any]) -> int | None:
    from prunekit.measure.macs import count_macs

    try:
        return count_macs(model, example).total
    except Exception:  # a model the counter cannot trace: the record says "not counted"
        return None
