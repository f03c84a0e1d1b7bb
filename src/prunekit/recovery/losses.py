"""Losses for the recovery engine: ``loss(student_output, batch, teacher_output) -> Tensor``.

``finetune(..., loss=...)`` takes any callable of that shape: ``batch`` is the batch as the
loader gave it (moved to the training device), ``teacher_output`` is the teacher's output on
it (None without a teacher). The ones here:

* ``ClassificationLoss``: cross-entropy on the labels, mixed with logit distillation at a
  temperature when a teacher runs (``DistillationLoss``, Hinton et al. 2015). The default.
* ``SegmentationLoss``: pixel cross-entropy plus soft Dice (Milletari et al., "V-Net", 3DV
  2016), with pixel-wise logit distillation when a teacher runs.
* ``EmbeddingDistillationLoss``: a sentence encoder imitating its dense teacher: embedding
  cosine, in-batch similarity structure (``relational_loss``) and, optionally, every layer's
  token hidden states (``hidden_state_loss``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from prunekit.errors import DataError
from prunekit.recovery._checkpoint import RecoveryError
from prunekit.recovery.distill import DistillationLoss

__all__ = [
    "ClassificationLoss",
    "EmbeddingDistillationLoss",
    "Loss",
    "SegmentationLoss",
    "dice_loss",
    "hidden_state_loss",
    "labels_of",
    "relational_loss",
]

Loss = Callable[[Any, Any, Any], Tensor]
IGNORE_INDEX = 255  # the "void" label of segmentation masks (VOC), as prunekit.evaluate uses


def labels_of(batch: Any) -> Tensor:
    """The labels of an ``(inputs, labels)`` batch."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Tensor):
        return batch[1]
    raise DataError(
        f"expected an (inputs, labels) batch with a labels tensor, got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


class ClassificationLoss:
    """``(1 - alpha) * CE(logits, labels) + alpha * T**2 * KL(teacher || student at T)``;
    plain cross-entropy when no teacher output is given (see ``DistillationLoss``)."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.7) -> None:
        self.with_teacher = DistillationLoss(temperature, alpha)
        self.alone = DistillationLoss(temperature, 0.0)

    def __call__(self, output: Any, batch: Any, teacher_output: Any = None) -> Tensor:
        labels = labels_of(batch)
        if teacher_output is None:
            return self.alone(output, None, labels)
        return self.with_teacher(output, teacher_output, labels)


# --- segmentation ---------------------------------------------------------------------------


def _segmentation_logits(output: Any) -> Tensor:
    from prunekit.evaluate.segmentation import segmentation_logits

    return segmentation_logits(output)


def dice_loss(
    logits: Tensor, target: Tensor, *, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0
) -> Tensor:
    r"""Soft Dice loss of ``logits`` [B, C, H, W] against integer ``target`` [B, H, W].

    With ``p`` the softmax probabilities and ``g`` the one-hot target, summed over every
    pixel of the batch whose label is not ``ignore_index``::

        dice_c = (2 * sum(p_c * g_c) + smooth) / (sum(p_c) + sum(g_c) + smooth)
        loss   = 1 - mean of dice_c over the classes present in ``target``

    Classes absent from the batch's labels are left out of the mean (the cross-entropy still
    punishes predicting them): with a small ``smooth`` they would score 0 whatever the model
    does. 0 when every pixel is ignored.
    """
    classes = logits.shape[1]
    valid = target != ignore_index
    probs = F.softmax(logits.float(), dim=1) * valid.unsqueeze(1)
    onehot = F.one_hot(torch.where(valid, target, 0).long(), classes).permute(0, 3, 1, 2)
    onehot = onehot.to(probs.dtype) * valid.unsqueeze(1)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    sizes = probs.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    dice = (2 * inter + smooth) / (sizes + smooth)
    return 1 - dice[present].mean()


class SegmentationLoss:
    """Pixel cross-entropy (``ignore_index`` skipped) plus ``dice_weight`` times
    ``dice_loss``; with a teacher and ``alpha > 0``, mixed with pixel-wise logit distillation
    (per pixel ``T**2 * KL(teacher || student at T)``, mean over pixels) as
    ``alpha * kd + (1 - alpha) * task``. Logits of another size than the masks are resized
    to them (bilinear), the teacher's to the student's."""

    def __init__(
        self,
        dice_weight: float = 1.0,
        *,
        temperature: float = 4.0,
        alpha: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if not dice_weight >= 0 or not temperature > 0 or not 0 <= alpha <= 1:
            raise RecoveryError(
                "SegmentationLoss needs dice_weight >= 0, temperature > 0 and alpha in [0, 1], "
                f"got {dice_weight}, {temperature}, {alpha}"
            )
        self.dice_weight = float(dice_weight)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.ignore_index = ignore_index

    def __call__(self, output: Any, batch: Any, teacher_output: Any = None) -> Tensor:
        logits = _segmentation_logits(output).float()
        masks = labels_of(batch).to(logits.device).long()
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear",
                                   align_corners=False)  # fmt: skip
        task = F.cross_entropy(logits, masks, ignore_index=self.ignore_index)
        if self.dice_weight:
            task = task + self.dice_weight * dice_loss(
                logits, masks, ignore_index=self.ignore_index
            )
        if teacher_output is None or self.alpha == 0:
            return task
        teacher = _segmentation_logits(teacher_output).detach().float()
        if teacher.shape[-2:] != logits.shape[-2:]:
            teacher = F.interpolate(teacher, size=logits.shape[-2:], mode="bilinear",
                                    align_corners=False)  # fmt: skip
        t = self.temperature
        kd = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher / t, 1),
                      log_target=True, reduction="none").sum(1).mean() * t * t  # fmt: skip
        return self.alpha * kd + (1 - self.alpha) * task


# --- embedding distillation ---------------------------------------------------------------


def relational_loss(student: Tensor, teacher: Tensor, weight: float = 1.0) -> Tensor:
    """``mean(1 - cos) + weight * mean((S_student - S_teacher)^2)`` over a batch of embeddings,
    ``S`` the in-batch cosine-similarity matrices (Park et al., "Relational Knowledge
    Distillation", CVPR 2019, on cosine similarities)."""
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher, dim=-1)
    pointwise = (1 - (s * t).sum(-1)).mean()
    relational = (s @ s.T - t @ t.T).pow(2).mean()
    return pointwise + weight * relational


def hidden_state_loss(
    student: Sequence[Tensor], teacher: Sequence[Tensor], attention_mask: Tensor
) -> Tensor:
    """Mean over layers of ``sum((s - t)^2) / sum(t^2)`` over the real (unpadded) tokens
    (TinyBERT's hidden-state loss, Jiao et al. 2020, normalised per layer so that layers of
    different scale weigh the same)."""
    if len(student) != len(teacher):
        raise RecoveryError(
            f"hidden-state distillation needs as many layers in the student as in the teacher "
            f"({len(student)} against {len(teacher)}); use hidden_weight=0 after dropping layers"
        )
    mask = attention_mask.unsqueeze(-1).to(student[0].dtype)
    terms = []
    for s, t in zip(student, teacher, strict=True):
        if s.shape != t.shape:
            raise RecoveryError(
                f"hidden states of shape {list(s.shape)} cannot be matched to the teacher's "
                f"{list(t.shape)}"
            )
        terms.append(((s - t).pow(2) * mask).sum() / (t.pow(2) * mask).sum().clamp_min(1e-12))
    return torch.stack(terms).mean()


class EmbeddingDistillationLoss:
    """A sentence encoder imitating its teacher on a tokenised ``batch`` (a mapping with an
    ``attention_mask``). With ``hidden_weight == 0`` both outputs are sentence embeddings
    [batch, dim] and the loss is ``relational_loss``; otherwise both are the tuples of hidden
    states of every layer (``output_hidden_states=True``) and the loss is ``relational_loss``
    of the mean-pooled last layer plus ``hidden_weight * hidden_state_loss``."""

    def __init__(self, relational_weight: float = 1.0, hidden_weight: float = 0.0) -> None:
        if hidden_weight < 0:
            raise RecoveryError(f"hidden_weight must be >= 0, got {hidden_weight}")
        self.relational_weight = float(relational_weight)
        self.hidden_weight = float(hidden_weight)

    def __call__(self, output: Any, batch: Any, teacher_output: Any = None) -> Tensor:
        if teacher_output is None:
            raise RecoveryError("embedding distillation needs the teacher's outputs")
        if self.hidden_weight == 0:
            return relational_loss(output, teacher_output, self.relational_weight)
        from prunekit.evaluate.embedding import mean_pool

        if not isinstance(batch, Mapping) or "attention_mask" not in batch:
            raise RecoveryError(
                "hidden-state distillation needs tokenised batches with an attention_mask"
            )
        mask = batch["attention_mask"]
        pooled = relational_loss(mean_pool(output[-1], mask), mean_pool(teacher_output[-1], mask),
                                 self.relational_weight)  # fmt: skip
        return pooled + self.hidden_weight * hidden_state_loss(output, teacher_output, mask)
