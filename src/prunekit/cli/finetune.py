"""``prunekit finetune MODEL --data SPEC --teacher MODEL --out DIR``: recover a pruned model.

Trains on the data's fit part (a validation share of it picks the best epoch), distilling
from the teacher plus the task loss; reports accuracy on the held-out eval part; writes the
artifact and ``finetune.json``. A checkpoint is kept beside ``--out`` (``DIR.checkpoint/``)
while training; ``--resume`` continues an interrupted run from it. Under ``torchrun`` every
rank trains (DistributedDataParallel) and rank 0 writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prunekit.cli._common import (
    DATA_HELP,
    add_debug,
    add_model_arguments,
    check_out_is_not_model,
    load_from_args,
    print_json,
    say,
)

CHECKPOINT_SUFFIX = ".checkpoint"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "finetune",
        help="recover a pruned model's accuracy: distil from the dense teacher on --data",
        description="Fine-tune MODEL (a pruned artifact, or any model) on the fit part of "
        "--data, distilling from --teacher (its logits at --kd-temperature) plus the task loss, "
        "keep the best epoch by validation accuracy (a share of the fit part), and report "
        "accuracy on the held-out eval part. Writes an artifact directory with finetune.json.",
    )
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, metavar="SPEC", help=DATA_HELP)
    parser.add_argument("--teacher", metavar="MODEL",
                        help="the dense model to distil from (default: no distillation)")  # fmt: skip
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, metavar="N", help="epochs to train (default 2)")
    length.add_argument("--seconds", type=float, metavar="S",
                        help="train until the clock runs out (at most 1000 epochs)")  # fmt: skip
    parser.add_argument("--lr", type=float, default=0.01, help="peak learning rate (default 0.01)")
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    parser.add_argument("--batch-size", type=int, default=64, metavar="N",
                        help="per-process batch (under torchrun the global batch is N x ranks)")  # fmt: skip
    parser.add_argument("--kd-temperature", type=float, default=4.0, metavar="T")
    parser.add_argument("--kd-alpha", type=float, default=0.7, metavar="A",
                        help="weight of the distillation term, in [0, 1] (default 0.7)")  # fmt: skip
    parser.add_argument("--patience", type=int, metavar="N",
                        help="stop after N epochs without a better validation score")  # fmt: skip
    parser.add_argument("--device", metavar="DEVICE",
                        help="train on this device, e.g. cuda or cuda:1 (default: cuda when "
                        "available, else cpu; under torchrun each rank takes its LOCAL_RANK GPU)")  # fmt: skip
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run whose checkpoint is in DIR.checkpoint/")  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="artifact directory to write")
    parser.add_argument("--force", action="store_true",
                        help="replace DIR when it holds a previous `prunekit finetune` output; "
                        "start over from a stale checkpoint")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print finetune.json on stdout")
    add_debug(parser)
    parser.set_defaults(handler=run)


def checkpoint_dir_for(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f"{out.name}{CHECKPOINT_SUFFIX}"


def check_resume(checkpoint: Path, resume: bool, force: bool) -> None:
    """``--resume`` needs a checkpoint; a stale one without ``--resume`` is never silently
    trained over or deleted."""
    from prunekit.errors import InputSpecError, OutputPathError
    from prunekit.recovery._checkpoint import is_checkpoint_dir

    if checkpoint.exists() and not is_checkpoint_dir(checkpoint):
        raise OutputPathError(f"{checkpoint} holds files prunekit did not write (finetune keeps "
                              "its checkpoint there): move them, or choose another --out")  # fmt: skip
    last = checkpoint / "last.pt"
    if resume and not last.is_file():
        raise InputSpecError(
            f"--resume: no checkpoint at {checkpoint}/ (a run with the same --out writes one "
            "after every epoch); drop --resume to start"
        )
    if not resume and last.is_file() and not force:
        raise InputSpecError(
            f"{checkpoint}/ holds an interrupted run: pass --resume to continue it, or --force "
            "to start over"
        )


def _device(requested: str | None) -> str:
    import os

    import torch

    from prunekit._checks import check_device_present

    if requested is not None:
        return str(check_device_present(requested))
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def run(args: argparse.Namespace) -> int:
    import os

    import prunekit as pk
    from prunekit._outputs import check_output_dir
    from prunekit._progress import EpochProgress
    from prunekit.api.evaluation import evaluate, model_sizes
    from prunekit.models import load_model
    from prunekit.recovery._checkpoint import remove_checkpoint_dir
    from prunekit.recovery.distributed import is_primary

    primary = is_primary()
    check_out_is_not_model(args.out, args.model)
    out = check_output_dir(args.out, "prunekit finetune", force=args.force,
                           log=say if primary else (lambda _: None))  # fmt: skip
    checkpoint = checkpoint_dir_for(args.out)
    check_resume(checkpoint, args.resume, args.force)
    epochs = args.epochs if args.epochs is not None else (1000 if args.seconds else 2)
    config = pk.RecoverConfig(
        epochs=epochs, seconds=args.seconds, lr=args.lr, optimizer=args.optimizer,
        batch_size=args.batch_size, kd_temperature=args.kd_temperature, kd_alpha=args.kd_alpha,
        patience=args.patience, seed=args.seed, device=_device(args.device),
    )  # fmt: skip
    student = load_from_args(args)
    teacher = (
        load_model(args.teacher, trust_code=args.trust_code, seed=args.seed)
        if args.teacher
        else None
    )
    example = student.input_spec.make(1)
    data = pk.api.data.as_data(args.data, example=example, seed=args.seed)
    # torchrun's WORLD_SIZE: the process group only exists once training starts
    per_rank = len(data.fit) * (1 - config.validation) / int(os.environ.get("WORLD_SIZE", "1"))
    bars = EpochProgress(int(per_rank // config.batch_size)) if primary else None

    record: dict[str, Any] = {"model": student.name, "teacher": args.teacher}
    pk.recover_(student.model, data, config, teacher=teacher.model if teacher else None,
                example=example, checkpoint_dir=checkpoint, resume=args.resume,
                record=record, on_step=bars, log=say if primary else None)  # fmt: skip
    if bars is not None:
        bars.close()
    if not primary:
        return 0
    final = evaluate(student.model, data, example=example)
    record["eval"] = final
    record["teacher_model"] = args.teacher
    record["sizes"] = {"model": model_sizes(student.model, example)}
    if teacher is not None:
        record["sizes"]["teacher"] = model_sizes(teacher.model, example)
        dense = evaluate(teacher.model, data, example=example)
        key = "top1" if data.task == "classification" else "miou"
        record["teacher_eval"] = dense
        record["retention"] = final[key] / dense[key] if dense[key] else None
    student.model.cpu()  # artifacts hold CPU tensors, whatever trained them
    pk.save(student.model, out, source=student, extra_files={"finetune.json": record})
    remove_checkpoint_dir(checkpoint)
    if args.json:
        print_json(record)
        return 0
    key = "top1" if data.task == "classification" else "miou"
    history = record.get("history", [])
    for h in history:
        score = h.get("val_score")
        print(f"epoch {h['epoch']}: train loss {h['train_loss']:.4f}"
              + (f", validation {key} {score:.4f}" if score is not None else ""))  # fmt: skip
    print(f"stopped by: {record.get('stopped_by')}; best epoch {record.get('best_epoch')}")
    split = data.split
    print(f"held-out {key} {final[key]:.4f} on {final['samples']} samples ({split.eval_from})"
          + (f"; teacher {record['teacher_eval'][key]:.4f}, retention {record['retention']:.2%}"
             if teacher is not None else ""))  # fmt: skip
    print(f"wrote {args.out}/ (prunekit.json, model.safetensors, finetune.json)")
    return 0
