"""``pk.evaluate``: a model's task metric on the held-out part of a data spec.

The result names the split it was measured on and its size, so a number is never reported
without saying which data it came from (DESIGN.md, evaluation discipline).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.api._config import choice
from prunekit.errors import DataError

TASKS = ("classification", "segmentation", "embedding")
SPLITS = ("eval", "fit")


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    task: str | None = None,
    example: Any = None,
    reference: nn.Module | None = None,
    tokenizer: Any = None,
    split: str = "eval",
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Measure ``model`` on ``data``'s ``split`` (``"eval"``: the held-out part; ``"fit"``
    only to look at training fit, and said so in the result).

    ``task``: ``classification`` (top-1 / top-5 / loss), ``segmentation`` (mIoU, Dice, pixel
    accuracy), ``embedding`` (fidelity of sentence embeddings to ``reference``'s: mean cosine
    and the Spearman correlation of pairwise similarities; needs ``tokenizer``); default: the
    data's own task. ``example``: an input of the model, to size / reshape images.
    Returns ``{"task", "split", "samples", "data": {...}, <metrics>}``.
    """
    from prunekit.api.data import as_data
    from prunekit.evaluate import evaluate_classification

    choice(split, "split", SPLITS)
    resolved = as_data(data, example=example)
    task = task or resolved.task
    choice(task, "task", TASKS)
    if task != resolved.task and not (
        task == "classification" and resolved.task == "classification"
    ):
        raise DataError(
            f"--data {resolved.spec} holds {resolved.task} data; it cannot measure {task}"
        )
    part = resolved.eval if split == "eval" else resolved.fit
    result: dict[str, Any] = {"task": task, "split": split, "data": resolved.to_dict()}
    if task == "embedding":
        from prunekit.evaluate.embedding import embed, fidelity

        if reference is None or tokenizer is None:
            raise DataError(
                "embedding fidelity compares with a reference model: pass --reference MODEL "
                "(reference= and tokenizer= in Python)"
            )
        with torch.no_grad():
            quality = fidelity(embed(reference, tokenizer, part), embed(model, tokenizer, part))
        result.update(samples=len(part), **quality)
        return result
    loader = torch.utils.data.DataLoader(part, batch_size=batch_size, shuffle=False)
    if task == "segmentation":
        from prunekit.evaluate.segmentation import evaluate_segmentation

        metrics = evaluate_segmentation(model, loader, device=device).to_dict()
    else:
        metrics = evaluate_classification(model, loader, device=device).to_dict()
    result.update(samples=metrics.pop("n"), **metrics)
    if reference is not None:
        ref = evaluate(reference, resolved, task=task, split=split, batch_size=batch_size,
                       device=device)  # fmt: skip
        key = "top1" if task == "classification" else "miou"
        result["reference"] = {key: ref[key]}
        result["retention"] = result[key] / ref[key] if ref[key] else None
    return result


def model_sizes(model: nn.Module, example: Any) -> dict[str, int]:
    """MACs (for ``example``), parameters and parameter bytes: the sizes every record keeps."""
    from prunekit.measure.macs import count_macs
    from prunekit.measure.params import count_params

    params = count_params(model)
    return {"macs": count_macs(model, example).total, "params": params.params,
            "bytes": sum(p.numel() * p.element_size() for p in model.parameters())}  # fmt: skip
