"""The baseline: MACs, parameters and bytes of a model, in total and per layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from prunekit._checks import check_module, check_optional
from prunekit.inputs import ExampleInputs, as_example_inputs
from prunekit.measure.macs import count_macs
from prunekit.measure.params import count_params

TOP_LEVEL = "(top level)"


@dataclass(frozen=True)
class LayerStats:
    """One module's own cost (its submodules are separate rows).

    ``output_shape`` is None for a module that did not run on the example inputs (an
    auxiliary head that is skipped in eval mode, an unused layer): its parameters still count.
    """

    name: str
    type: str
    macs: int
    params: int
    param_bytes: int
    int8_bytes: int
    output_shape: list[int] | None


@dataclass(frozen=True)
class Analysis:
    """Totals and per-layer rows; see ``to_dict`` for the JSON form that ``--json`` prints."""

    model: str
    inputs: str
    macs: int
    params: int
    trainable_params: int
    param_bytes: int
    int8_bytes: int
    buffer_bytes: int
    dtypes: list[str]
    layers: list[LayerStats]
    macs_by_op: dict[str, int]

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["flops"] = self.flops
        return data


def analyze(
    model: nn.Module,
    inputs: ExampleInputs | torch.Tensor | tuple[Any, ...] | dict[str, Any],
    *,
    name: str | None = None,
) -> Analysis:
    """Measure ``model`` on ``inputs``: MACs (1 MAC = 2 FLOPs), exact parameters and bytes.

    Layers are listed in the order they first ran, followed by modules that own parameters but
    did not run. The model itself is not modified.
    """
    check_module(model)
    example = as_example_inputs(inputs)
    check_optional(name, str, "name", "a display name (a string)")
    macs = count_macs(model, example)
    params = count_params(model)
    modules = dict(model.named_modules())

    ran = list(macs.output_shapes)
    names = [n for n in ran if n in macs.by_module or n in params.by_module]
    names += [n for n in params.by_module if n not in macs.output_shapes]
    if "" in macs.by_module and "" not in names:
        names.insert(0, "")

    layers = []
    for n in names:
        own = params.by_module.get(n)
        layers.append(
            LayerStats(
                name=n or TOP_LEVEL,
                type=type(modules[n]).__name__ if n in modules else "",
                macs=macs.by_module.get(n, 0),
                params=own.params if own else 0,
                param_bytes=own.param_bytes if own else 0,
                int8_bytes=own.params if own else 0,
                output_shape=macs.output_shapes.get(n),
            )
        )
    return Analysis(
        model=name or type(model).__name__,
        inputs=example.describe(),
        macs=macs.total,
        params=params.params,
        trainable_params=params.trainable_params,
        param_bytes=params.param_bytes,
        int8_bytes=params.int8_bytes,
        buffer_bytes=params.buffer_bytes,
        dtypes=params.dtypes,
        layers=layers,
        macs_by_op=macs.by_op,
    )
