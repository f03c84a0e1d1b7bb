"""What every criterion shares: the result type, errors, calibration batches, layer kinds."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit._tensors import named_tensors
from prunekit.criteria._norms import atom_scores
from prunekit.criteria.registry import CriterionError
from prunekit.graph import ChannelGraph, Group, Member
from prunekit.inputs import ExampleInputs, as_example_inputs, map_tensors

__all__ = ["CriterionError", "GroupScores", "ScoreRequest"]  # and the helpers below


@dataclass(frozen=True)
class ScoreRequest:
    """What ``group_scores`` passes to a registered criterion's ``score(model, graph, request)``:
    its name (one function serves ``l1`` and ``l2``), calibration batches, the Taylor loss
    (``loss_fn`` / ``batch_loss``) and the seed of ``random``."""

    criterion: str
    calibration: Iterable[Any] | None = None
    loss_fn: Any = None
    batch_loss: Any = None
    seed: int = 0


class GroupScores(dict[int, np.ndarray]):
    """``group.id -> one score per atom`` (group-local order; higher = more important).

    A plain dict, as ``prune(..., scores=...)`` and ``plan_pruning`` take it, plus:
    ``criterion``, the name of the criterion that produced it, and ``fallback``,
    ``group.id -> reason`` for every group the criterion could not score, which was scored by
    L1 group magnitude instead (never silently by zeros).
    """

    def __init__(self, criterion: str) -> None:
        super().__init__()
        self.criterion = criterion
        self.fallback: dict[int, str] = {}

    def use_magnitude(
        self,
        group: Group,
        tensors: Mapping[str, torch.Tensor],
        reason: str,
        cache: dict[int, torch.Tensor] | None = None,
    ) -> None:
        """Score ``group`` by L1 group magnitude and record why."""
        self[group.id] = atom_scores(group, tensors, "l1", cache)
        self.fallback[group.id] = reason


def model_tensors(model: nn.Module, graph: ChannelGraph) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers by qualified name, checked against ``graph``."""
    tensors = named_tensors(model)
    for group in graph.prunable:
        for m in group.members:
            if m.owner not in tensors:
                raise CriterionError(
                    f"the channel graph names a tensor {m.owner!r} that the model does not "
                    "have: trace the graph on this model (prunekit.graph.trace_channels)"
                )
    return tensors


def model_device(model: nn.Module) -> torch.device | None:
    """Where the model's first parameter or buffer lives (None for a stateless model)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return None


def accumulation_dtype(device: torch.device | None) -> torch.dtype:
    """float64 where the device has it, for sums over many batches."""
    return torch.float32 if device is not None and device.type == "mps" else torch.float64


def module_of(owner: str) -> str:
    return owner.rpartition(".")[0]


_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer with (optionally) one scale per channel."""
    return isinstance(module, _NORMS)


def output_channel_dim(module: nn.Module, out: torch.Tensor) -> int | None:
    """The dimension of ``out`` (the module's output) that indexes its channels, if known.

    Convolutions and BatchNorm/InstanceNorm/GroupNorm: dimension 1 (0 for an unbatched conv
    input); Linear, Bilinear, Embedding, LayerNorm, RMSNorm: the last dimension.
    """
    if isinstance(module, nn.modules.conv._ConvNd):
        return 1 if out.dim() == module.weight.dim() else 0
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
        return 1
    if isinstance(module, (nn.Linear, nn.Bilinear, nn.Embedding, nn.LayerNorm)) or (
        hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm)
    ):
        return out.dim() - 1
    return None


def channel_member(group: Group, module: str) -> Member | None:
    """A member of ``group`` owned by ``module`` whose indices are the module's output channels
    (one that no slice reads from: a conv's filters, a bias, a norm's scale or statistics)."""
    for m in group.members:
        if module_of(m.owner) == module and not m.consumer.any():
            return m
    return None


@dataclass(frozen=True)
class Batch:
    inputs: ExampleInputs
    targets: Any  # None when the batch came without targets
    item: Any  # the batch as given, its tensors moved to the model's device


def _move(value: Any, device: torch.device | None) -> Any:
    if device is None:
        return value
    if isinstance(value, ExampleInputs):
        return value.to(device)
    return map_tensors(value, lambda t: t.to(device))


def calibration_batches(
    calibration: Iterable[Any] | None, criterion: str, device: torch.device | None
) -> Iterator[Batch]:
    """The calibration batches, moved to ``device``.

    A batch is a pair ``(inputs, targets)`` (a tuple or list of two: what a ``DataLoader``
    over a labelled dataset yields) or inputs alone (a tensor, a dict of keyword arguments, or
    ``prunekit.inputs.ExampleInputs``). Inputs follow ``as_example_inputs``: a tensor or list
    is the single positional argument, a tuple the positional arguments, a dict the keyword
    arguments. A model taking two positional tensors gets ``((a, b), targets)`` or
    ``ExampleInputs((a, b))``.
    """
    if calibration is None:
        raise CriterionError(
            f"importance criterion {criterion!r} needs calibration data: pass "
            "calibration=<an iterable of batches, e.g. a DataLoader of (inputs, targets)>"
        )
    if isinstance(calibration, (torch.Tensor, ExampleInputs, dict)) or not isinstance(
        calibration, Iterable
    ):
        raise CriterionError(
            f"calibration data for {criterion!r} must be an iterable of batches (a DataLoader, "
            f"or a list such as [(inputs, targets)]), got {type(calibration).__name__}; wrap a "
            "single batch in a list"
        )
    count = 0
    for item in calibration:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            inputs, targets = item
        else:
            inputs, targets = item, None
        example = as_example_inputs(inputs)
        yield Batch(
            example.to(device) if device is not None else example,
            _move(targets, device),
            _move(item, device),
        )
        count += 1
    if count == 0:
        raise CriterionError(f"the calibration data for {criterion!r} holds no batch")


def scalar_loss(loss: Any, what: str, no_gradient: str) -> torch.Tensor:
    """``loss`` as a 0-d tensor that has a gradient; ``what`` names who needs it in the error,
    ``no_gradient`` says what to check when it has none."""
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = list(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise CriterionError(f"{what} a scalar loss tensor, got {shape}")
    if not loss.requires_grad:
        raise CriterionError(f"the loss {no_gradient}")
    return loss.reshape(())
