"""Eager PyTorch: the model as the user runs it, under ``torch.inference_mode``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from prunekit.inputs import ExampleInputs
from prunekit.measure.backends._base import Backend


class EagerBackend(Backend):
    name = "eager"

    def runner(self, inputs: ExampleInputs, batch_size: int) -> Callable[[], Any]:
        model = self.model

        def run() -> Any:
            with torch.inference_mode():
                return inputs.call(model)

        return run
