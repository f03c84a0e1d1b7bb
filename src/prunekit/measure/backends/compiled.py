"""``torch.compile`` (TorchInductor): the graph PyTorch itself would deploy.

Each batch size is compiled for its static shape (``dynamic=False``), the setting that gives
Inductor the most freedom; compilation happens during warm-up and its time is reported
separately, never mixed into the latency samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from prunekit._utils import describe_exception
from prunekit.errors import BackendError
from prunekit.inputs import ExampleInputs, flatten_tensors
from prunekit.measure.backends._base import Backend, check_parity, eager_reference


class CompileBackend(Backend):
    name = "compile"

    def runner(self, inputs: ExampleInputs, batch_size: int) -> Callable[[], Any]:
        reference = eager_reference(self.model, inputs)
        compiled = torch.compile(self.model, dynamic=False)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                outputs = inputs.call(compiled)
        except Exception as exc:
            raise BackendError(
                f"torch.compile failed for this model: {describe_exception(exc)} "
                "(on CPU, Inductor needs a working C++ compiler)"
            ) from exc
        self.info.setdefault("compile_s", {})[str(batch_size)] = time.perf_counter() - start
        self.info.setdefault("parity", {})[str(batch_size)] = check_parity(
            reference, flatten_tensors(outputs), "torch.compile"
        )

        def run() -> Any:
            with torch.inference_mode():
                return inputs.call(compiled)

        return run
