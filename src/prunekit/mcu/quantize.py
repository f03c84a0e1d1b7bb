"""Post-training int8 quantisation of a Linear + ReLU MLP into a ``QuantizedMLP``.

The scheme is TFLite's (see ``qmodel``): symmetric per-output-channel int8 weights,
asymmetric per-tensor int8 activations whose ranges come from a calibration sample, int32
biases with the input zero point folded in, and Q31 multiplier + shift requantisation.

Besides the quantiser this module holds the *float* simulation of the integer model
(``fake_quant_linear`` / ``fake_quant_forward``): it computes what the integer arithmetic
approximates, with real-valued scales instead of fixed-point multipliers. Agreement of the two
within one LSB is the evidence that the folded biases, multipliers and shifts are right; an
error in any of them shows up as a difference of many LSBs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from prunekit.errors import DeploymentError
from prunekit.mcu.qmodel import (
    INT8_MAX,
    INT8_MIN,
    INT32_MAX,
    INT32_MIN,
    QuantizedLinear,
    QuantizedMLP,
)

__all__ = [
    "activation_qparams",
    "calibration_ranges",
    "dequantized_float_model",
    "fake_quant_forward",
    "fake_quant_linear",
    "layer_input_qparams",
    "mlp_layers",
    "quantize_mlp",
    "quantize_multiplier",
    "quantize_weights",
]

_UNSUPPORTED = "prunekit's C export supports Linear + ReLU MLPs"
# Modules that do nothing to a [n, features] tensor at inference time. Dropout is the identity
# in eval mode, which is the only mode a deployed model runs in.
_TRANSPARENT: tuple[type[nn.Module], ...] = (nn.Identity, nn.Dropout, nn.Flatten)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """Round half away from zero (C's ``round``/TFLite's ``TfLiteRound``), not numpy's half-to-even."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _plain(module: nn.Module, kind: type[nn.Module]) -> bool:
    """``module`` is a ``kind`` whose ``forward`` is ``kind``'s own.

    A subclass that overrides ``forward`` may compute anything, so walking its children (or
    reading its weights) would not describe what it does; such modules are rejected.
    """
    return isinstance(module, kind) and type(module).forward is kind.forward


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def mlp_layers(model: nn.Module) -> list[tuple[nn.Linear, bool]]:
    """The model's Linear layers in execution order, each with whether a ReLU follows it.

    ``model`` may be built from ``nn.Sequential`` (nested, or subclasses that keep Sequential's
    forward), ``nn.Linear``, ``nn.ReLU``, ``nn.Dropout``, ``nn.Identity`` and ``nn.Flatten``
    (with its default dims, which is a no-op on the ``[n, features]`` tensors of an MLP).
    Dropout, Identity and Flatten between a Linear and its ReLU do not prevent the fusion; a
    second ReLU after a fused one is idempotent and accepted. Anything else raises
    ``DeploymentError`` naming the module's path, because the C code only has these layers.
    """
    layers: list[tuple[nn.Linear, bool]] = []
    paths: list[str] = []
    # True when the last non-transparent module was a Linear or a ReLU fused to it: only then
    # does a ReLU have something to fuse into.
    can_fuse = False

    def visit(module: nn.Module, path: str) -> None:
        nonlocal can_fuse
        where = path or "the model root"
        if _plain(module, nn.Sequential):
            for name, child in module.named_children():
                visit(child, _path(path, name))
        elif _plain(module, nn.Linear):
            assert isinstance(module, nn.Linear)  # for mypy; _plain checked it
            if layers and layers[-1][0].out_features != module.in_features:
                raise DeploymentError(
                    f"Linear at {where} expects {module.in_features} inputs but the Linear at "
                    f"{paths[-1] or 'the model root'} before it produces "
                    f"{layers[-1][0].out_features}"
                )
            layers.append((module, False))
            paths.append(path)
            can_fuse = True
        elif _plain(module, nn.ReLU):
            if not can_fuse:
                raise DeploymentError(
                    f"{_UNSUPPORTED}; found ReLU at {where} that does not follow a Linear"
                )
            layers[-1] = (layers[-1][0], True)
        elif _plain(module, nn.Flatten):
            assert isinstance(module, nn.Flatten)
            if module.start_dim != 1 or module.end_dim != -1:
                raise DeploymentError(
                    f"{_UNSUPPORTED}; found Flatten(start_dim={module.start_dim}, "
                    f"end_dim={module.end_dim}) at {where}, only Flatten(1, -1) is supported"
                )
        elif any(_plain(module, kind) for kind in _TRANSPARENT):
            pass
        else:
            raise DeploymentError(f"{_UNSUPPORTED}; found {type(module).__name__} at {where}")

    visit(model, "")
    if not layers:
        raise DeploymentError(f"{_UNSUPPORTED}; the model has no Linear layer")
    return layers


def quantize_multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's ``QuantizeMultiplier``: ``real ~= q * 2**(shift - 31)``, elementwise.

    ``q`` is an int32 in ``[2**30, 2**31)`` (a Q31 mantissa in [0.5, 1)) and ``shift`` an int32,
    positive for a left shift. ``real == 0`` gives ``(0, 0)``. As in TFLite, a multiplier too
    small for a right shift of at most 31 bits (below ~2**-32) is flushed to ``(0, 0)``, since
    its product with any int32 accumulator rounds to zero anyway, and one of 2**30 or more
    saturates to ``(2**31 - 1, 30)``. The relative error of the representation is at most
    2**-31 otherwise. Negative or non-finite multipliers raise ``DeploymentError``: they come
    from broken scales, and the fixed-point arithmetic cannot represent them.
    """
    r = np.asarray(real, dtype=np.float64)
    if not np.all(np.isfinite(r)):
        raise DeploymentError("requantisation multipliers must be finite, got inf or NaN")
    if np.any(r < 0):
        raise DeploymentError(f"requantisation multipliers must be >= 0, got {float(r.min())}")
    mantissa, exponent = np.frexp(r)
    # mantissa in [0.5, 1) has 53 bits, so mantissa * 2**31 and the + 0.5 are exact in float64;
    # floor(x + 0.5) is round half away from zero for these non-negative values, as in TFLite.
    q = np.floor(mantissa * 2.0**31 + 0.5)
    shift = exponent.astype(np.int64)
    # A mantissa just below 1 can round up to 2**31, which does not fit an int32.
    carry = q == 2.0**31
    q = np.where(carry, q / 2, q)
    shift = np.where(carry, shift + 1, shift)
    flush = (r == 0) | (shift < -31)
    q = np.where(flush, 0, q)
    shift = np.where(flush, 0, shift)
    saturate = shift > 30
    q = np.where(saturate, INT32_MAX, q)
    shift = np.where(saturate, 30, shift)
    return q.astype(np.int32), shift.astype(np.int32)


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point of an int8 activation whose calibrated range is ``[lo, hi]``.

    As in TFLite the range is first extended to contain 0, so that 0 (ReLU's output for every
    inactive neuron, and the implicit padding value) is represented exactly by the zero point.
    A zero-width range (a dead layer that outputs only zeros) gets scale 1.0: any positive scale
    represents it exactly, and 1.0 keeps the requantisation multipliers ordinary.
    """
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DeploymentError(f"activation range [{lo}, {hi}] is not finite")
    if lo > hi:
        raise DeploymentError(f"activation range [{lo}, {hi}] has its minimum above its maximum")
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / (INT8_MAX - INT8_MIN)
    if not scale > 0:
        scale = 1.0
    zero_point = float(_round_half_away(np.asarray(INT8_MIN - lo / scale)))
    return scale, int(np.clip(zero_point, INT8_MIN, INT8_MAX))


def _as_2d_float(calibration_inputs: torch.Tensor | np.ndarray, in_features: int) -> np.ndarray:
    x = (
        calibration_inputs.detach().cpu().to(torch.float64).numpy()
        if isinstance(calibration_inputs, torch.Tensor)
        else np.asarray(calibration_inputs, dtype=np.float64)
    )
    if x.ndim < 2 or x.shape[0] == 0:
        raise DeploymentError(
            f"calibration inputs must have shape [n, {in_features}] with n >= 1, got "
            f"{tuple(x.shape)}"
        )
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] != in_features:
        raise DeploymentError(
            f"calibration inputs have {x.shape[1]} features per sample but the first Linear "
            f"expects {in_features}"
        )
    if not np.all(np.isfinite(x)):
        raise DeploymentError("calibration inputs contain inf or NaN")
    return x


def _float_weights(linear: nn.Linear, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias of ``linear`` as float64 numpy (zero bias when it has none)."""
    with torch.no_grad():
        w = linear.weight.detach().cpu().to(torch.float64).numpy()
        b = (
            linear.bias.detach().cpu().to(torch.float64).numpy()
            if linear.bias is not None
            else np.zeros(linear.out_features)
        )
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
        raise DeploymentError(f"Linear layer {index} has inf or NaN weights or biases")
    return w, b


def calibration_ranges(
    model: nn.Module, calibration_inputs: torch.Tensor | np.ndarray
) -> list[tuple[float, float]]:
    """``(min, max)`` of the input and of every Linear's output (after its ReLU, if fused).

    The float model is evaluated layer by layer from ``mlp_layers`` in float64, which is what
    its eval-mode forward computes (Dropout, Identity and Flatten are no-ops there) without
    touching the model's train/eval state. Inputs with more than two dims are flattened.
    """
    layers = mlp_layers(model)
    h = _as_2d_float(calibration_inputs, layers[0][0].in_features)
    ranges = [(float(h.min()), float(h.max()))]
    for index, (linear, relu) in enumerate(layers):
        w, b = _float_weights(linear, index)
        h = h @ w.T + b
        if relu:
            h = np.maximum(h, 0.0)
        ranges.append((float(h.min()), float(h.max())))
    return ranges


def quantize_weights(
    weight: np.ndarray, scale: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 weights: ``(q int8 [out, in], scale float32 [out])``.

    The default scale maps each row's largest magnitude to 127. A row of zeros (a pruned
    neuron) gets scale 1.0, as any scale represents it and 1.0 keeps its bias and multiplier
    well-conditioned. ``scale`` overrides the per-row scales, e.g. with a weight-sharing
    codebook's step so its values land exactly on integers; values beyond +-127 steps are
    clipped. Exact zeros always quantise to exactly 0, so pruned weights stay pruned, and the
    scales are rounded to float32 first so everything downstream uses the stored values.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2:
        raise DeploymentError(f"weights must have shape [out, in], got {tuple(w.shape)}")
    if not np.all(np.isfinite(w)):
        raise DeploymentError("weights contain inf or NaN")
    out_features = w.shape[0]
    if scale is None:
        s = np.max(np.abs(w), axis=1) / INT8_MAX
    else:
        try:
            s = np.broadcast_to(np.asarray(scale, dtype=np.float64), (out_features,)).copy()
        except ValueError:
            raise DeploymentError(
                f"weight scales of shape {np.shape(scale)} do not match {out_features} "
                "output channels"
            ) from None
        if not (np.all(np.isfinite(s)) and np.all(s > 0)):
            raise DeploymentError("weight scales must be finite and > 0")
    s32 = s.astype(np.float32)
    # Zero rows, and rows so tiny their scale underflows float32, would divide by zero.
    s32[~(s32 > 0)] = 1.0
    q = np.clip(_round_half_away(w / s32.astype(np.float64)[:, None]), -INT8_MAX, INT8_MAX)
    q[w == 0] = 0  # already true by the rounding; stated because pruning relies on it
    return q.astype(np.int8), s32


def quantize_mlp(
    model: nn.Module,
    calibration_inputs: torch.Tensor | np.ndarray,
    weight_scales: Sequence[np.ndarray] | None = None,
) -> QuantizedMLP:
    """Post-training int8 quantisation of a Linear + ReLU MLP (see the module docstring).

    ``calibration_inputs`` (``[n, in_features]``, or more dims that flatten to it) sets the
    activation ranges, so it should be representative of deployment inputs; the training set
    is the usual choice. ``weight_scales`` (one array of per-output-channel scales per Linear)
    overrides the default max-abs scales.
    """
    layers = mlp_layers(model)
    if weight_scales is not None and len(weight_scales) != len(layers):
        raise DeploymentError(
            f"weight_scales has {len(weight_scales)} entries but the model has "
            f"{len(layers)} Linear layers"
        )
    ranges = calibration_ranges(model, calibration_inputs)
    input_scale, input_zero_point = activation_qparams(*ranges[0])
    s_in, z_in = input_scale, input_zero_point
    qlayers: list[QuantizedLinear] = []
    for index, (linear, relu) in enumerate(layers):
        w, b = _float_weights(linear, index)
        try:
            q, s_w32 = quantize_weights(w, None if weight_scales is None else weight_scales[index])
        except DeploymentError as exc:
            raise DeploymentError(f"Linear layer {index}: {exc}") from None
        s_w = s_w32.astype(np.float64)
        s_out, z_out = activation_qparams(*ranges[index + 1])
        acc_scale = s_in * s_w  # the scale of the int32 accumulator, per output channel
        # The device computes sum_i W x_i over raw int8 inputs; subtracting z_in * sum_i W here
        # turns that into sum_i W (x_i - z_in) at no runtime cost.
        row_sums = q.astype(np.int64).sum(axis=1)
        bias = _round_half_away(b / acc_scale) - z_in * row_sums
        multiplier, shift = quantize_multiplier(acc_scale / s_out)
        qlayers.append(
            QuantizedLinear(
                weight=q,
                bias=np.clip(bias, INT32_MIN, INT32_MAX).astype(np.int32),
                multiplier=multiplier,
                shift=shift,
                output_zero_point=z_out,
                relu=relu,
                weight_scale=s_w32,
                output_scale=s_out,
            )
        )
        s_in, z_in = s_out, z_out
    return QuantizedMLP(qlayers, input_scale, input_zero_point)


def layer_input_qparams(qmodel: QuantizedMLP) -> Iterator[tuple[QuantizedLinear, float, int]]:
    """Each layer with its input's ``(scale, zero_point)``.

    A ``QuantizedLinear`` does not store its input quantisation: it is the previous layer's
    output quantisation, or the model's input quantisation for the first layer.
    """
    scale, zero_point = qmodel.input_scale, qmodel.input_zero_point
    for layer in qmodel.layers:
        yield layer, scale, zero_point
        scale, zero_point = layer.output_scale, layer.output_zero_point


def _float_bias(layer: QuantizedLinear, input_scale: float, input_zero_point: int) -> np.ndarray:
    """The real-valued bias the int32 bias stands for, with the zero-point folding undone."""
    row_sums = layer.weight.astype(np.int64).sum(axis=1)
    unfolded = layer.bias.astype(np.int64) + input_zero_point * row_sums
    return unfolded * (input_scale * layer.weight_scale.astype(np.float64))


def fake_quant_linear(
    layer: QuantizedLinear, x_int8: np.ndarray, input_scale: float, input_zero_point: int
) -> np.ndarray:
    """Float simulation of ``linear_forward``: int8 ``[n, in]`` -> int8 ``[n, out]``.

    Dequantises the input and the weights, adds the unfolded float bias, computes the layer in
    float64 and quantises the result with the layer's output scale and zero point (round half
    away from zero, clamped at the zero point when a ReLU is fused). The integer path differs
    only by the fixed-point multiplier's rounding, so the two agree within one LSB.
    """
    x = np.asarray(x_int8)
    if x.ndim != 2 or x.shape[1] != layer.in_features:
        raise DeploymentError(
            f"fake-quant input must have shape [n, {layer.in_features}], got {tuple(x.shape)}"
        )
    if not np.issubdtype(x.dtype, np.integer) or (
        x.size and (x.min() < INT8_MIN or x.max() > INT8_MAX)
    ):
        raise DeploymentError("fake-quant input must be int8 values in [-128, 127]")
    x_real = (x.astype(np.float64) - input_zero_point) * input_scale
    w_real = layer.weight.astype(np.float64) * layer.weight_scale.astype(np.float64)[:, None]
    y = x_real @ w_real.T + _float_bias(layer, input_scale, input_zero_point)
    q = _round_half_away(y / layer.output_scale) + layer.output_zero_point
    low = layer.output_zero_point if layer.relu else INT8_MIN
    return np.clip(q, low, INT8_MAX).astype(np.int8)


def fake_quant_forward(qmodel: QuantizedMLP, x_int8: np.ndarray) -> np.ndarray:
    """``fake_quant_linear`` chained through all layers: the float counterpart of
    ``integer_forward`` (each layer re-quantises, so per-layer LSB differences can compound)."""
    h = np.asarray(x_int8)
    for layer, scale, zero_point in layer_input_qparams(qmodel):
        h = fake_quant_linear(layer, h, scale, zero_point)
    return h


def dequantized_float_model(
    qmodel: QuantizedMLP, dtype: torch.dtype = torch.float32
) -> nn.Sequential:
    """An ``nn.Sequential`` of Linear (+ReLU) holding the dequantised weights and biases.

    It isolates the error of weight quantisation from that of activation quantisation: run on
    float inputs, it shows how much accuracy the int8 weights alone cost.
    """
    modules: list[nn.Module] = []
    for layer, scale, zero_point in layer_input_qparams(qmodel):
        linear = nn.Linear(layer.in_features, layer.out_features, dtype=dtype)
        w_real = layer.weight.astype(np.float64) * layer.weight_scale.astype(np.float64)[:, None]
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w_real))
            linear.bias.copy_(torch.from_numpy(_float_bias(layer, scale, zero_point)))
        modules.append(linear)
        if layer.relu:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)
