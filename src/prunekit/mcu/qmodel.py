"""The integer-only model a microcontroller runs, and its reference inference in Python.

Conventions are TensorFlow Lite's int8 scheme (https://www.tensorflow.org/lite/performance/quantization_spec):

- weights: int8, symmetric, one scale per output channel (zero point 0, range [-127, 127]);
- activations: int8, asymmetric, one scale and zero point per tensor;
- biases: int32 with scale ``input_scale * weight_scale[o]``;
- requantisation of the int32 accumulator to the next int8 activation with a fixed-point
  multiplier (int32, Q31, in [2^30, 2^31)) and a power-of-two shift, so no float is needed.

``integer_forward`` is the oracle: the generated C code must produce exactly its int8 outputs.
The arithmetic below follows TFLite's ``MultiplyByQuantizedMultiplier`` (gemmlowp's
``SaturatingRoundingDoublingHighMul`` then ``RoundingDivideByPOT``), evaluated in int64 numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@dataclass
class QuantizedLinear:
    """One ``y = act(W x + b)`` layer in integer form.

    ``bias`` already has the input zero point folded in (``b - z_in * sum_i W[o, i]``), so the
    inner loop is a plain ``sum_i W[o, i] * x[i]`` over int8 values.
    """

    weight: np.ndarray  # int8 [out, in]; exact zeros are pruned weights
    bias: np.ndarray  # int32 [out], zero-point correction folded in
    multiplier: np.ndarray  # int32 [out], Q31 fixed point in [2^30, 2^31)
    shift: np.ndarray  # int32 [out]; > 0 shifts left, < 0 shifts right
    output_zero_point: int  # int8 zero point of this layer's output
    relu: bool  # clamp the output at the zero point (a fused ReLU)
    weight_scale: np.ndarray = field(repr=False)  # float32 [out], for reporting and fake-quant
    output_scale: float = 1.0

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])


@dataclass
class QuantizedMLP:
    """A stack of ``QuantizedLinear`` layers; the input is quantised with ``input_scale/zero_point``."""

    layers: list[QuantizedLinear]
    input_scale: float
    input_zero_point: int

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Float inputs ``[n, in]`` -> int8, as the device would receive them."""
        scaled = np.asarray(x, dtype=np.float64) / self.input_scale
        # half away from zero, like the quantiser and like roundf() in firmware (np.round is
        # half to even)
        q = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + self.input_zero_point
        return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul on int32 values (computed in int64)."""
    a = a.astype(np.int64)
    b = b.astype(np.int64)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    # C's integer division truncates toward zero; numpy's // floors, hence the sign dance.
    total = ab + nudge
    high = np.sign(total) * (np.abs(total) >> 31)
    return np.where(overflow, INT32_MAX, high).astype(np.int64)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: round-half-away-from-zero division by 2**exponent."""
    x = x.astype(np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).astype(np.int64)
    return (x >> exponent) + (remainder > threshold).astype(np.int64)


def multiply_by_quantized_multiplier(
    acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier, broadcast over the last axis (output channels)."""
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    shifted = np.clip(acc.astype(np.int64) * (np.int64(1) << left), INT32_MIN, INT32_MAX)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right)


def linear_forward(layer: QuantizedLinear, x: np.ndarray) -> np.ndarray:
    """One layer on int8 inputs ``[n, in]`` -> int8 outputs ``[n, out]``, integers only."""
    acc = x.astype(np.int64) @ layer.weight.astype(np.int64).T + layer.bias.astype(np.int64)
    acc = np.clip(acc, INT32_MIN, INT32_MAX)  # the C code saturates the same way
    y = multiply_by_quantized_multiplier(acc, layer.multiplier, layer.shift)
    y = y + layer.output_zero_point
    low = layer.output_zero_point if layer.relu else INT8_MIN
    return np.clip(y, low, INT8_MAX).astype(np.int8)


def integer_forward(model: QuantizedMLP, x: np.ndarray) -> np.ndarray:
    """int8 inputs ``[n, in]`` -> int8 logits ``[n, classes]``; the oracle for the C code."""
    h = np.asarray(x, dtype=np.int8)
    for layer in model.layers:
        h = linear_forward(layer, h)
    return h


def integer_predict(model: QuantizedMLP, x: np.ndarray) -> np.ndarray:
    """Predicted classes; ties go to the lowest index, as in the C code's argmax."""
    return np.argmax(integer_forward(model, x), axis=1)
