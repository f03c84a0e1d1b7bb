"""What every backend provides, and the output-parity check shared by the non-eager ones."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit.errors import BackendError
from prunekit.inputs import ExampleInputs, flatten_tensors

# Outputs agree when max|a - b| <= ATOL + RTOL * max|reference|. fp32 graph rewrites (operator
# fusion, different conv algorithms, reassociated reductions) move results by ~1e-6 relative;
# a wrong graph moves them by O(1).
RTOL = 1e-3
ATOL = 1e-4


class Backend(ABC):
    """Prepares one model on one device; ``runner(inputs)`` gives a callable for one inference."""

    name: ClassVar[str]
    # True when timing a call includes copying inputs/outputs between host and device.
    includes_host_transfers: ClassVar[bool] = False

    def __init__(self, model: nn.Module, device: torch.device, threads: int) -> None:
        self.model = model
        self.device = device
        self.threads = threads
        self.info: dict[str, Any] = {}

    @abstractmethod
    def runner(self, inputs: ExampleInputs, batch_size: int) -> Callable[[], Any]:
        """A zero-argument callable running one inference on ``inputs`` (already on device)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release resources (temporary files, sessions)."""


def eager_reference(model: nn.Module, inputs: ExampleInputs) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [t.detach().float().cpu() for t in flatten_tensors(inputs.call(model))]


def check_parity(
    reference: list[torch.Tensor], candidate: list[torch.Tensor], what: str
) -> dict[str, Any]:
    """Compare ``candidate`` outputs with eager ``reference`` outputs; raise on mismatch.

    Returns a record (max absolute difference, tolerance) for the benchmark's JSON.
    """
    if len(reference) != len(candidate):
        raise BackendError(
            f"{what} returned {len(candidate)} outputs but the eager model returns "
            f"{len(reference)}; refusing to time a different computation"
        )
    worst = 0.0
    tolerance = 0.0
    for i, (ref, got) in enumerate(zip(reference, candidate, strict=True)):
        got = got.detach().float().cpu()
        if tuple(ref.shape) != tuple(got.shape):
            raise BackendError(
                f"{what} output {i} has shape {tuple(got.shape)}, eager gives {tuple(ref.shape)}"
            )
        if ref.numel() == 0:
            continue
        diff = float((ref - got).abs().max())
        tol = ATOL + RTOL * float(ref.abs().max())
        if not diff <= tol:  # also catches NaN
            raise BackendError(
                f"{what} output {i} differs from eager PyTorch: max abs difference {diff:.3g} "
                f"exceeds tolerance {tol:.3g}; refusing to time a different computation"
            )
        worst = max(worst, diff)
        tolerance = max(tolerance, tol)
    return {"max_abs_diff": worst, "tolerance": tolerance, "outputs": len(reference)}
