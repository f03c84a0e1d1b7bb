"""Exact parameter and byte accounting.

A parameter shared by several modules (tied input/output embeddings, a reused block) is
counted once, and attributed to the first module that owns it in ``named_modules()`` order.
Bytes are the storage size at each tensor's own dtype; the int8 figure is what the weights
would take at one byte per parameter (quantization scales and zero points not included).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunekit._checks import check_module


@dataclass(frozen=True)
class ModuleParams:
    params: int
    param_bytes: int


@dataclass(frozen=True)
class ParamCount:
    params: int
    trainable_params: int
    param_bytes: int
    int8_bytes: int
    buffers: int
    buffer_bytes: int
    dtypes: list[str]
    by_module: dict[str, ModuleParams]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def count_params(model: nn.Module) -> ParamCount:
    """Count unique parameters and buffers of ``model``, totals and per owning module."""
    check_module(model)
    seen: set[int] = set()
    by_module: dict[str, ModuleParams] = {}
    params = trainable = nbytes = 0
    dtypes: set[str] = set()
    for name, module in model.named_modules():
        own = own_bytes = 0
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            own += p.numel()
            own_bytes += p.numel() * p.element_size()
            trainable += p.numel() if p.requires_grad else 0
            dtypes.add(_dtype_name(p.dtype))
        if own:
            by_module[name] = ModuleParams(own, own_bytes)
            params += own
            nbytes += own_bytes
    buffers = buffer_bytes = 0
    seen_buffers: set[int] = set()
    for b in model.buffers():
        if id(b) not in seen_buffers:
            seen_buffers.add(id(b))
            buffers += b.numel()
            buffer_bytes += b.numel() * b.element_size()
    return ParamCount(
        params=params,
        trainable_params=trainable,
        param_bytes=nbytes,
        int8_bytes=params,
        buffers=buffers,
        buffer_bytes=buffer_bytes,
        dtypes=sorted(dtypes),
        by_module=by_module,
    )
