"""Multiply-accumulate (MAC) counting on top of ``torch.utils.flop_counter``.

Convention: one MAC is one multiply plus one add, i.e. 1 MAC = 2 FLOPs. torch's
``FlopCounterMode`` counts 2 FLOPs per multiply-add of matrix multiplications, convolutions
(depthwise and grouped included: their formula divides by ``groups``) and fused attention;
we report ``MACs = FLOPs / 2``. This is the unit of torchvision's published ``_ops`` figures
(GMACs) and of the numbers usually quoted in papers ("MobileNetV2: 300 M MACs").
Element-wise work (activations, normalisation, additions, pooling, softmax) is not counted,
the same convention those published figures use.

Two details that make the counts right on every backend:

* CPU attention runs ``aten._scaled_dot_product_flash_attention_for_cpu``, which
  ``FlopCounterMode`` does not know; without a formula the ``q @ k^T`` and ``attn @ v``
  matmuls would count as zero. We register the same formula torch uses for its CUDA kernels.
* ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` take a fused "fast path"
  (``aten._native_multi_head_attention``) under ``no_grad`` in eval mode, which would hide the
  projections too. We switch that fast path off while counting; the arithmetic is identical.

Counting runs on a ``meta``-device copy of the model when it can (shapes only: instant and
no memory, even for billion-parameter models) and falls back to a real forward pass for
models whose control flow depends on data (e.g. detection post-processing).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from prunekit._checks import check_module
from prunekit._utils import describe_exception, meta_copy, module_device
from prunekit.errors import ModelForwardError
from prunekit.inputs import ExampleInputs, as_example_inputs, flatten_tensors

log = logging.getLogger(__name__)

aten = torch.ops.aten


def _sdpa_formula(
    query_shape: Any,
    key_shape: Any,
    value_shape: Any,
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    # Same cost model as torch's own formula for the CUDA flash/efficient kernels:
    # 2 * B * H * Lq * Lk * E for q @ k^T plus the same for attn @ v (in FLOPs).
    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


def _extra_formulas() -> dict[Any, Any]:
    names = (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable",
    )
    return {getattr(aten, n): _sdpa_formula for n in names if hasattr(aten, n)}


@dataclass(frozen=True)
class MacCount:
    """MACs of one forward pass.

    ``by_module`` maps a module's qualified name to the MACs executed by that module itself,
    excluding its submodules (``""`` is the top-level model's own code, e.g. a functional
    matmul in its ``forward``). The values sum to ``total``. ``output_shapes`` holds the
    shape of each module's first output tensor, in the order modules first ran.
    """

    total: int
    by_module: dict[str, int]
    by_op: dict[str, int]
    output_shapes: dict[str, list[int]] = field(default_factory=dict)
    on_meta: bool = False

    @property
    def flops(self) -> int:
        return 2 * self.total


@contextmanager
def _counting_context(model: nn.Module) -> Iterator[None]:
    """Eval mode, no autograd, MHA fast path off; restores all three afterwards."""
    was_training = model.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)


def _exclusive_counts(raw: dict[str, dict[Any, int]], root_name: str) -> dict[str, int]:
    """Turn FlopCounterMode's inclusive per-module counts into exclusive ones, keyed by FQN.

    The tracker names modules ``<RootClass>.<child>.<grandchild>`` and only lists modules
    whose ``forward`` ran and counted something, so a container such as ``nn.ModuleList``
    (never called itself) is absent. Each module's counts are therefore subtracted from its
    nearest *listed* ancestor rather than from its textual parent.
    """
    inclusive = {name: sum(ops.values()) for name, ops in raw.items() if name != "Global"}
    exclusive = dict(inclusive)
    for name, total in inclusive.items():
        parent = name
        while "." in parent:
            parent = parent.rpartition(".")[0]
            if parent in inclusive:
                exclusive[parent] -= total
                break
    by_fqn: dict[str, int] = {}
    for name, own in exclusive.items():
        if own:
            fqn = "" if name == root_name else name.removeprefix(root_name + ".")
            by_fqn[fqn] = by_fqn.get(fqn, 0) + own
    outside = sum(raw.get("Global", {}).values()) - inclusive.get(root_name, 0)
    if outside:
        by_fqn[""] = by_fqn.get("", 0) + outside
    return by_fqn


def _record_output_shapes(model: nn.Module) -> tuple[dict[str, list[int]], list[Any]]:
    shapes: dict[str, list[int]] = {}
    handles = []
    for name, module in model.named_modules():

        def hook(_m: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
            if name not in shapes:
                tensors = flatten_tensors(out)
                shapes[name] = list(tensors[0].shape) if tensors else []

        handles.append(module.register_forward_hook(hook))
    return shapes, handles


def _count_on(
    model: nn.Module, inputs: ExampleInputs
) -> tuple[FlopCounterMode, dict[str, list[int]]]:
    shapes, handles = _record_output_shapes(model)
    try:
        with (
            _counting_context(model),
            FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter,
        ):
            inputs.call(model)
    finally:
        for h in handles:
            h.remove()
    return counter, shapes


def count_macs(
    model: nn.Module,
    inputs: ExampleInputs | torch.Tensor | tuple[Any, ...] | dict[str, Any],
    *,
    use_meta: bool = True,
) -> MacCount:
    """Count the MACs of ``model`` on ``inputs`` (a tensor, an args tuple or ExampleInputs).

    The model is left exactly as it was (same mode, same parameters and buffers). Raises
    ``ModelForwardError`` if the forward pass fails on these inputs.
    """
    check_module(model)
    example = as_example_inputs(inputs)
    result = None
    on_meta = False
    if use_meta:
        meta_model = meta_copy(model)
        if meta_model is not None:
            try:
                result = _count_on(meta_model, example.to("meta"))
                on_meta = True
            except Exception as exc:  # data-dependent code: fall back to a real run
                log.debug("counting on meta failed (%s); using a real forward pass", exc)
    if result is None:
        try:
            result = _count_on(model, example.to(module_device(model)))
        except Exception as exc:
            raise ModelForwardError(
                f"the forward pass failed on inputs {example.describe()}: {describe_exception(exc)}"
            ) from exc
    counter, shapes = result
    raw = counter.get_flop_counts()
    by_op = {str(op).removeprefix("aten."): v // 2 for op, v in raw.get("Global", {}).items()}
    by_module = {k: v // 2 for k, v in _exclusive_counts(raw, type(model).__name__).items()}
    return MacCount(
        total=counter.get_total_flops() // 2,
        by_module=by_module,
        by_op=by_op,
        output_shapes=shapes,
        on_meta=on_meta,
    )
