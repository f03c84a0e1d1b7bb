"""First-order Taylor importance, from gradients of a loss on calibration batches.

Removing a set of parameters ``S`` (setting them to zero) changes the loss by about
``-sum_{s in S} g_s w_s`` to first order, where ``g = dL/dw``; the square of that sum estimates
how much the loss would move. Molchanov et al., "Importance Estimation for Neural Network
Pruning" (CVPR 2019), score a filter this way and average the estimate over minibatches.

Here, for every (tensor, dimension) of a group and every batch ``b``::

    c_b(atom) = ( sum over the slices of the tensor that the atom owns of sum(w * dL_b/dw) )^2

``c`` is averaged over the batches, each (tensor, dimension) is divided by its mean over the
atoms with a non-zero value (as in group magnitude, so that no layer dominates), and the
results are summed per atom. Buffers (running statistics) have no gradient and are left out.

The model runs in eval mode (dropout off, BatchNorm on its running statistics, which a
calibration pass therefore leaves unchanged). Only the tensors of prunable groups get
gradients, and each gradient is reduced to one number per index and freed as soon as it has
been accumulated (a post-accumulate-grad hook), so memory holds at most the gradients that
backward is producing at that moment, not one per parameter. The parameters' ``.grad`` and
``requires_grad`` are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.criteria._common import (
    CriterionError,
    GroupScores,
    ScoreRequest,
    accumulation_dtype,
    calibration_batches,
    model_device,
    model_tensors,
    scalar_loss,
)
from prunekit.graph import ChannelGraph

__all__ = ["BatchLoss", "LossFn", "taylor_scores"]

LossFn = Callable[[Any, Any], torch.Tensor]  # (model outputs, targets) -> scalar loss
BatchLoss = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> scalar loss


def _per_index(prod: torch.Tensor, dim: int) -> torch.Tensor:
    if prod.dim() <= 1:
        return prod.reshape(-1)
    return prod.sum(dim=[d for d in range(prod.dim()) if d != dim])


def _check_loss(loss: Any) -> torch.Tensor:
    return scalar_loss(
        loss,
        "the Taylor criterion needs",
        "does not depend on any parameter of a prunable group (it has no gradient): check "
        "loss_fn / batch_loss",
    )


def taylor_scores(
    model: nn.Module,
    graph: ChannelGraph,
    calibration: Iterable[Any] | None,
    loss_fn: LossFn | None = None,
    *,
    batch_loss: BatchLoss | None = None,
) -> GroupScores:
    """First-order Taylor importance of every prunable group of ``graph``.

    ``calibration``: an iterable of batches (see ``prunekit.criteria``): ``(inputs, targets)``
    pairs, for which the loss is ``loss_fn(model(inputs), targets)`` (default: cross-entropy),
    or any batches together with ``batch_loss(model, batch) -> scalar loss`` (for models that
    compute their own loss, such as Hugging Face models given labels).

    A group that no gradient reaches (all its estimates are zero, e.g. a branch the loss does
    not use) is scored by L1 magnitude instead and listed in the result's ``fallback``.
    """
    if loss_fn is not None and batch_loss is not None:
        raise CriterionError("pass either loss_fn or batch_loss to the Taylor criterion, not both")
    tensors = model_tensors(model, graph)
    groups = graph.prunable
    dims: dict[str, set[int]] = {}
    for group in groups:
        for m in group.members:
            if not m.is_buffer:
                dims.setdefault(m.owner, set()).add(m.dim)
    device = model_device(model)
    dtype = accumulation_dtype(device)

    current: dict[tuple[str, int], torch.Tensor] = {}  # this batch: per-index sum of w * g

    def hook_for(owner: str) -> Callable[[torch.Tensor], None]:
        wanted = sorted(dims[owner])

        def hook(p: torch.Tensor) -> None:
            grad = p.grad
            if grad is None:
                return
            prod = p.detach().float() * grad.float()
            for d in wanted:
                current[(owner, d)] = _per_index(prod, d).to(dtype)
            p.grad = None  # reduced: free it now

        return hook

    scored = {id(tensors[o]) for o in dims}
    params = list(model.parameters())
    saved = [(p, p.requires_grad, p.grad) for p in params]
    was_training = model.training
    handles = []
    acc: dict[tuple[int, int], torch.Tensor] = {}  # (group.id, member index) -> sum of c_b
    atoms: dict[tuple[int, int], torch.Tensor] = {}
    batches = 0
    try:
        for p in params:
            p.grad = None
            p.requires_grad_(id(p) in scored)
        for owner in dims:
            t = tensors[owner]
            if not t.is_leaf or not t.is_floating_point():
                raise CriterionError(f"tensor {owner!r} is not a trainable floating-point leaf")
            t.requires_grad_(True)
            handles.append(t.register_post_accumulate_grad_hook(hook_for(owner)))
        model.eval()
        for batch in calibration_batches(calibration, "taylor", device):
            with torch.enable_grad():
                if batch_loss is not None:
                    loss = batch_loss(model, batch.item)
                else:
                    if batch.targets is None:
                        raise CriterionError(
                            "the Taylor criterion needs targets: give (inputs, targets) batches, "
                            "or batch_loss=<function (model, batch) -> loss>"
                        )
                    outputs = batch.inputs.call(model)
                    loss = (loss_fn or F.cross_entropy)(outputs, batch.targets)
                _check_loss(loss).backward()
            del loss
            batches += 1
            for group in groups:
                for k, m in enumerate(group.members):
                    vec = current.get((m.owner, m.dim))
                    if m.is_buffer or vec is None:
                        continue  # no gradient reached this tensor in this batch
                    key = (group.id, k)
                    if key not in atoms:
                        atoms[key] = torch.as_tensor(m.atom, device=vec.device)
                        acc[key] = torch.zeros(group.size, dtype=dtype, device=vec.device)
                    per_atom = torch.zeros_like(acc[key]).index_add_(0, atoms[key], vec)
                    acc[key] += per_atom * per_atom
            current.clear()
    finally:
        for h in handles:
            h.remove()
        current.clear()
        for p, requires_grad, grad in saved:
            p.requires_grad_(requires_grad)
            p.grad = grad
        model.train(was_training)

    scores = GroupScores("taylor")
    cache: dict[int, torch.Tensor] = {}
    for group in groups:
        total = np.zeros(group.size)
        for k in range(len(group.members)):
            if (group.id, k) not in acc:
                continue
            mean = acc[(group.id, k)].cpu().double().numpy() / batches
            positive = mean[mean > 0]
            if positive.size:
                total += mean / positive.mean()
        if total.any():
            scores[group.id] = total
        else:
            scores.use_magnitude(
                group,
                tensors,
                "no gradient of the loss reaches this group: scored by L1 magnitude",
                cache,
            )
    return scores


def score(model: nn.Module, graph: ChannelGraph, request: ScoreRequest) -> GroupScores:
    """The registry's entry for ``taylor``."""
    return taylor_scores(
        model, graph, request.calibration, request.loss_fn, batch_loss=request.batch_loss
    )
