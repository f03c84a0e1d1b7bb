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
    # True for runtimes that exist only on NVIDIA GPUs (checked before any model is loaded)
    needs_cuda: ClassVar[bool] = False

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
        return reference_tensors(inputs.call(model))


def reference_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor of a model's output, as float32 on the CPU, for ``check_parity``."""
    return [t.detach().float().cpu() for t in flatten_tensors(output)]


def check_parity(
    reference: list[torch.Tensor],
    candidate: list[torch.Tensor],
    what: str,
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
    names: list[str] | None = None,
    refusal: str = "refusing to time a different computation",
) -> dict[str, Any]:
    """Compare ``candidate`` outputs with eager ``reference`` outputs; raise on mismatch.

    Output ``i`` agrees when ``max|a - b| <= atol + rtol * max|reference_i|``. Returns a
    record for the JSON: the largest absolute difference, the largest relative one (the
    absolute difference over the output's largest magnitude, the scale the tolerance uses),
    the tolerance. ``names`` name the outputs in errors; ``refusal`` ends them.
    """
    if len(reference) != len(candidate):
        raise BackendError(
            f"{what} returned {len(candidate)} outputs but the eager model returns "
            f"{len(reference)}; {refusal}"
        )
    worst = worst_rel = tolerance = 0.0
    for i, (ref, got) in enumerate(zip(reference, candidate, strict=True)):
        label = f"output {i}" + (f" ({names[i]})" if names and i < len(names) else "")
        got = got.detach().float().cpu()
        if tuple(ref.shape) != tuple(got.shape):
            raise BackendError(
                f"{what} {label} has shape {tuple(got.shape)}, eager gives {tuple(ref.shape)}; "
                f"{refusal}"
            )
        if ref.numel() == 0:
            continue
        diff = float((ref - got).abs().max())
        scale = float(ref.abs().max())
        rel = diff / scale if scale > 0 else diff
        tol = atol + rtol * scale
        if not diff <= tol:  # also catches NaN
            raise BackendError(
                f"{what} {label} differs from eager PyTorch: max abs difference {diff:.3g} "
                f"(max rel {rel:.3g}) exceeds tolerance {tol:.3g} (atol {atol:g} + rtol "
                f"{rtol:g} x max|output| {scale:.3g}); {refusal}"
            )
        worst, worst_rel = max(worst, diff), max(worst_rel, rel)
        tolerance = max(tolerance, tol)
    return {
        "max_abs_diff": worst,
        "max_rel_diff": worst_rel,
        "tolerance": tolerance,
        "outputs": len(reference),
    }
