"""A latency model from one profile of the dense model: where the time goes, module by module.

Timing the whole model once per group and width (``lut.profile_latency(method="measure")``)
is the most direct table, but each point is one noisy whole-model measurement: on a shared
or throttling machine, a group's effect of a few percent drowns in the noise (measured here:
MobileNetV2 at batch 32 on 2 shared cores, +-7% between identical runs). ``method="modules"``
instead times every leaf module of the dense model, many calls each, and models a pruned
width: a module's time scales with its MACs when it has any (convolutions, linear layers),
otherwise with the size of its output (normalisation, activations, pooling -- memory-bound
work), and the time outside leaf modules (Python glue, additions, reshapes) stays as it is.
It sees what MAC counts miss -- a depthwise convolution at high resolution costs far more time
than its MACs suggest -- but not kernel-selection effects of particular channel counts
(profile with the ``round_to`` the plan uses, or confirm the plan with ``prunekit bench``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prunekit._utils import meta_copy
from prunekit.inputs import ExampleInputs
from prunekit.measure.macs import count_macs
from prunekit.pruning.blocks import drop_blocks
from prunekit.pruning.surgery import ModelIndex, trial


@dataclass
class ModuleProfile:
    """Median milliseconds per leaf module (by name) and for the whole call, with hooks."""

    module_ms: dict[str, float]
    hooked_total_ms: float
    total_ms: float  # without hooks

    @property
    def outside_ms(self) -> float:
        """Time spent outside leaf modules in the hooked call (glue code), at least 0."""
        return max(self.hooked_total_ms - sum(self.module_ms.values()), 0.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def profile_modules(
    model: nn.Module, inputs: ExampleInputs, *, repeats: int = 10, warmup: int = 3
) -> ModuleProfile:
    """Time every leaf module of ``model`` (eval mode) over ``repeats`` calls (medians)."""
    device = next(iter(model.parameters())).device
    leaves = {n: m for n, m in model.named_modules() if n and not any(m.children())}
    samples: dict[str, list[float]] = {n: [] for n in leaves}
    starts: dict[str, float] = {}
    handles = []

    def pre(name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            _sync(device)
            starts[name] = time.perf_counter()

        return hook

    def post(name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            _sync(device)
            samples[name][-1] += (time.perf_counter() - starts.pop(name)) * 1e3

        return hook

    def call() -> float:
        _sync(device)
        start = time.perf_counter()
        inputs.call(model)
        _sync(device)
        return (time.perf_counter() - start) * 1e3

    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            call()
        plain = [call() for _ in range(repeats)]
        for name, module in leaves.items():
            handles.append(module.register_forward_pre_hook(pre(name)))
            handles.append(module.register_forward_hook(post(name)))
        hooked = []
        for _ in range(repeats):
            for s in samples.values():
                s.append(0.0)  # a module called several times accumulates within one call
            hooked.append(call())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return ModuleProfile(
        {n: float(np.median(s)) for n, s in samples.items() if s},
        float(np.median(hooked)),
        float(np.median(plain)),
    )


class ModuleLatencyModel:
    """Predicts the latency of ``model`` pruned by a list of (group, atoms) removals."""

    def __init__(self, model: nn.Module, example: ExampleInputs, profile: ModuleProfile) -> None:
        meta = meta_copy(model)
        if meta is None:
            raise ValueError("the model cannot be copied to the meta device")
        self.meta = meta
        self.index = ModelIndex.of(meta)
        self.example = example.to("meta")
        self.profile = profile
        self.dense = self._work()

    def _work(self) -> dict[str, tuple[float, float]]:
        """Per module: (MACs, output elements) of the current meta copy."""
        count = count_macs(self.meta, self.example)
        out = {}
        for name in self.profile.module_ms:
            shape = count.output_shapes.get(name)
            out[name] = (float(count.by_module.get(name, 0)), float(np.prod(shape)) if shape else 0)
        return out

    def predict(
        self, removals: list[tuple[object, np.ndarray]], dropped: Sequence[str] = ()
    ) -> float:
        """``dropped``: residual blocks whose branch goes (its modules' time with it)."""
        with (
            trial(self.meta, removals, self.index),  # type: ignore[arg-type]
            drop_blocks(self.meta, dropped, [self.example]),
        ):
            work = self._work()
        modelled = self.profile.outside_ms
        prefixes = tuple(f"{name}." for name in dropped)
        for name, ms in self.profile.module_ms.items():
            if name.startswith(prefixes):
                continue  # its time goes with the block's branch
            (macs, size), (dense_macs, dense_size) = work[name], self.dense[name]
            if dense_macs > 0:
                modelled += ms * macs / dense_macs
            elif dense_size > 0:
                modelled += ms * size / dense_size
            else:
                modelled += ms
        dense_modelled = self.profile.outside_ms + sum(self.profile.module_ms.values())
        return self.profile.total_ms * modelled / max(dense_modelled, 1e-12)
