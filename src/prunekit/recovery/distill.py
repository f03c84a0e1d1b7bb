"""Knowledge distillation loss: train a pruned student to imitate its dense teacher.

Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network"
(arXiv:1503.02531). A pruned network recovers faster from the dense model's full output
distribution than from one-hot labels alone: how the teacher ranks the *wrong* classes carries
information about which inputs resemble each other, which the labels do not.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DistillationLoss", "logits_of"]


def logits_of(output: Any) -> Tensor:
    """The logits tensor of a model output: the output itself, or its ``.logits`` attribute
    (as Hugging Face models return)."""
    logits = getattr(output, "logits", output)
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"expected classification logits (a tensor, or an output with a .logits tensor), "
            f"got {type(output).__name__}"
        )
    return logits


def _check_2d(logits: Tensor, what: str) -> None:
    if logits.dim() != 2:
        raise ValueError(
            f"{what} must be classification logits of shape [batch, num_classes], got shape "
            f"{list(logits.shape)}"
        )


class DistillationLoss(nn.Module):
    r"""Cross-entropy on the labels mixed with a softened imitation of a teacher.

    With student logits ``z_s``, teacher logits ``z_t``, labels ``y``, temperature ``T`` and
    weight ``alpha``::

        loss = (1 - alpha) * CE(z_s, y)  +  alpha * T**2 * KL(softmax(z_t / T) || softmax(z_s / T))

    ``CE`` is the ordinary cross-entropy (at temperature 1) and ``KL(p || q) = sum_c p_c *
    (log p_c - log q_c)``, both averaged over the batch. Dividing the logits by ``T > 1``
    flattens both distributions so that the small probabilities the teacher gives to wrong
    classes matter in the loss. Softening also shrinks the gradient of the KL term with
    respect to the student logits by about ``1 / T**2`` (Hinton et al. 2015, section 2); the
    ``T**2`` factor undoes that, so ``alpha`` keeps the same meaning whatever ``T`` is.

    ``alpha`` is the share of the teacher term: ``alpha=0`` is plain cross-entropy (no teacher
    needed), ``alpha=1`` ignores the labels (they may be None). Both arguments accept a logits
    tensor ``[batch, num_classes]`` or a model output with a ``.logits`` attribute. Teacher
    logits are detached: no gradient ever reaches the teacher. The loss is computed in float32
    even for half-precision logits.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.7) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"

    def forward(self, student: Any, teacher: Any = None, labels: Tensor | None = None) -> Tensor:
        """The loss of ``student`` outputs given ``teacher`` outputs and integer ``labels``."""
        s = logits_of(student)
        _check_2d(s, "student logits")
        s = s.float()
        total: Tensor | None = None
        if self.alpha < 1:
            if labels is None:
                raise ValueError(
                    f"labels are needed when alpha < 1 (alpha={self.alpha}: "
                    f"{1 - self.alpha:g} of the loss is cross-entropy on the labels)"
                )
            total = (1 - self.alpha) * F.cross_entropy(s, labels)
        if self.alpha > 0:
            if teacher is None:
                raise ValueError(
                    f"teacher logits are needed when alpha > 0 (alpha={self.alpha}); pass "
                    "alpha=0 for plain cross-entropy"
                )
            t = logits_of(teacher).detach()
            _check_2d(t, "teacher logits")
            if t.shape != s.shape:
                raise ValueError(
                    f"teacher logits {list(t.shape)} and student logits {list(s.shape)} "
                    "differ in shape"
                )
            temp = self.temperature
            soft = F.kl_div(
                F.log_softmax(s / temp, dim=1),
                F.log_softmax(t.float() / temp, dim=1),
                reduction="batchmean",
                log_target=True,
            )
            term = self.alpha * temp * temp * soft
            total = term if total is None else total + term
        assert total is not None  # alpha in [0, 1]: at least one branch ran
        return total
