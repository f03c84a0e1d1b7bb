"""What every model source returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunekit.inputs import InputSpec


@dataclass
class LoadedModel:
    """A model ready to measure, and how to call it.

    ``input_spec`` builds example inputs for any batch size; ``input_note`` says where the
    default input shape came from (printed so that a guessed shape is never silent).
    """

    model: nn.Module
    name: str
    source: str  # "torchvision" | "callable" | "huggingface" | "artifact"
    input_spec: InputSpec
    task: str = "unknown"
    input_note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    # how to build the original architecture again, as data (see prunekit.artifact)
    recipe: dict[str, Any] = field(default_factory=dict)
    # the seed of the random initialisation (None: not seeded); weights named in details
    seed: int | None = None

    def provenance(self) -> dict[str, Any]:
        """What makes two loads the same model: recorded by resumable files, so that a rerun
        with another model, weights or seed is refused instead of mixed in."""
        return {
            "model": self.name,
            "source": self.source,
            "weights": self.details.get("weights"),
            "seed": self.seed,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "task": self.task,
            "input": self.input_spec.to_dict(),
            **self.details,
        }
