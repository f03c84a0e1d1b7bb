"""Sparse weights stored compactly, and what each storage format costs in bytes.

A sparsified artifact keeps ``model.safetensors`` dense (any loader reads it) and adds
``sparse.safetensors``: per sparse tensor, its mask bit-packed (``NAME.bitmask``, uint8,
LSB-first over the row-major flattened tensor), its non-zero values (``NAME.values``, the
weight's dtype) and its shape (``NAME.shape``, int64). ``unpack`` rebuilds the exact tensor.

``storage_bytes`` gives the bytes of three layouts for one tensor, weights at their dtype:

* ``dense``: every entry;
* ``bitmask``: one bit per entry plus the non-zeros;
* ``csr``: the tensor as a ``[rows, columns]`` matrix (rows = dim 0), int32 row pointers
  (``rows + 1``) and int32 column indices (one per non-zero) plus the non-zeros -- the
  layout of ``torch.sparse_csr`` with int32 indices.

At fp32, bitmask beats dense below about 97% density and CSR beats bitmask below about 3%
density (CSR spends 4 index bytes per non-zero, the bitmask 1/8 byte per entry); ``best``
picks the smallest for a given tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "FORMATS", "best", "layer_storage", "pack", "storage_bytes", "storage_totals", "unpack",
    "unpack_file",
]  # fmt: skip

FORMATS = ("dense", "bitmask", "csr")
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def storage_bytes(weight: Tensor) -> dict[str, int]:
    """Bytes of ``weight`` stored dense, as bitmask + values, and as CSR (see the module)."""
    numel = weight.numel()
    size = weight.element_size()
    nonzero = int((weight.detach() != 0).sum())
    rows = weight.shape[0] if weight.dim() >= 1 else 1
    return {
        "dense": numel * size,
        "bitmask": math.ceil(numel / 8) + nonzero * size,
        "csr": (rows + 1) * 4 + nonzero * (4 + size),
    }


def best(sizes: Mapping[str, int]) -> str:
    """The smallest format (dense on a tie: it needs no decoding)."""
    return min(FORMATS, key=lambda f: (sizes[f], FORMATS.index(f)))


def layer_storage(name: str, weight: Tensor, pattern: str) -> dict[str, Any]:
    """One sparse layer's row, as ``analyze`` lists it and ``sparsify.json`` records it:
    ``name``, ``shape``, ``params``, ``nonzeros``, ``density``, ``pattern`` and ``bytes``
    (``storage_bytes``)."""
    nonzeros = int((weight.detach() != 0).sum())
    return {
        "name": name, "shape": list(weight.shape), "params": weight.numel(),
        "nonzeros": nonzeros, "density": nonzeros / weight.numel() if weight.numel() else 1.0,
        "pattern": pattern, "bytes": storage_bytes(weight),
    }  # fmt: skip


def storage_totals(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The bytes of every format summed over ``layers`` (``layer_storage`` rows) and the
    smallest (``best``; None without layers)."""
    totals: dict[str, Any] = {f: sum(layer["bytes"][f] for layer in layers) for f in FORMATS}
    return {**totals, "best": best(totals) if layers else None}


def pack(weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ``sparse.safetensors`` tensors of ``weights`` (see the module docstring)."""
    packed: dict[str, Tensor] = {}
    for name, weight in weights.items():
        flat = weight.detach().cpu().reshape(-1)
        keep = flat != 0
        padded = torch.zeros(math.ceil(flat.numel() / 8) * 8, dtype=torch.bool)
        padded[: flat.numel()] = keep
        bits = (padded.view(-1, 8).to(torch.uint8) * _BITS).sum(dim=1).to(torch.uint8)
        packed[f"{name}.bitmask"] = bits.contiguous()
        packed[f"{name}.values"] = flat[keep].contiguous()
        packed[f"{name}.shape"] = torch.tensor(list(weight.shape), dtype=torch.int64)
    return packed


def unpack(packed: Mapping[str, Tensor], name: str) -> Tensor:
    """Tensor ``name`` rebuilt from ``pack``'s output."""
    shape = [int(s) for s in packed[f"{name}.shape"].tolist()]
    numel = math.prod(shape)
    bits = packed[f"{name}.bitmask"]
    keep = ((bits.unsqueeze(1) & _BITS) != 0).reshape(-1)[:numel]
    values = packed[f"{name}.values"]
    if int(keep.sum()) != values.numel():
        raise ValueError(
            f"sparse tensor {name}: the mask marks {int(keep.sum())} non-zeros but "
            f"{values.numel()} values are stored; the file is damaged"
        )
    flat = torch.zeros(numel, dtype=values.dtype)
    flat[keep] = values
    return flat.reshape(shape)


def unpack_file(path: str) -> dict[str, Tensor]:
    """Every tensor of a ``sparse.safetensors`` file, rebuilt dense."""
    from safetensors.torch import load_file

    packed = load_file(path)
    names = [key.removesuffix(".shape") for key in packed if key.endswith(".shape")]
    return {name: unpack(packed, name) for name in names}
