"""C99 code for a ``QuantizedMLP``: constant arrays in flash, one static RAM arena, no floats.

The generated source computes exactly ``prunekit.mcu.qmodel.integer_forward``:

- every layer is a static function streaming once over its encoded weights
  (``prunekit.mcu.storage``), keeping one int32 accumulator for the current output row;
- the row sum ``sum_i W[o, i] x[i]`` fits int32 (``storage.MAX_IN_FEATURES``); the bias is added
  in int64 and the result saturated to int32, which is what the reference does (it sums in int64
  and clips). Starting the int32 accumulator at the bias could overflow, which C leaves undefined;
- requantisation is TFLite's ``MultiplyByQuantizedMultiplier`` in int64, written without
  right-shifts of negative numbers (implementation-defined in C99) so it is portable.

Memory: all weights, biases, multipliers, shifts and codebooks are ``const`` arrays at file scope
(flash on a microcontroller). They have external linkage, prefixed with the model's ``prefix``:
a ``static const`` array that the optimiser can read at compile time (a one-element entry count,
a tiny test layer) may be folded into the code and vanish from the object file, and then the
symbol sizes would no longer prove the byte accounting. Activations live in one
``static int8_t <prefix>_arena[N]``: layer ``i`` reads hidden activation ``h_i`` and writes
``h_{i+1}``, so ``N = max(h_i + h_{i+1})`` over consecutive hidden widths (just ``h_1`` with a single
hidden layer, no arena for a single layer). Hidden activations alternate between the arena's start
(outputs of layers 0, 2, ...) and its end (layers 1, 3, ...), so a layer's two buffers never
overlap. The first layer reads the caller's
input and the last writes the caller's logits directly. ``<prefix>_predict`` needs
``OUTPUT_SIZE`` bytes of stack for the logits. No heap, no VLAs, no recursion.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from prunekit.errors import DeploymentError
from prunekit.mcu.qmodel import INT8_MAX, INT8_MIN, INT32_MAX, INT32_MIN, QuantizedMLP
from prunekit.mcu.storage import (
    MAX_SHIFT,
    CArray,
    EncodedWeights,
    layer_bytes,
    model_storage,
    row_arrays,
)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VALUES_PER_LINE = 16


@dataclass
class CSource:
    """A generated model: write ``header`` to ``<prefix>.h`` and ``source`` to ``<prefix>.c``."""

    header: str
    source: str
    arena_bytes: int  # size of the static RAM arena (0: no arena, single-layer model)
    symbols: dict[str, int]  # every constant (flash) array symbol -> its exact size in bytes
    prefix: str = "prunekit_model"
    encodings: list[EncodedWeights] = field(default_factory=list, repr=False)

    @property
    def header_name(self) -> str:
        return f"{self.prefix}.h"

    @property
    def source_name(self) -> str:
        return f"{self.prefix}.c"

    @property
    def arena_symbol(self) -> str:
        return f"{self.prefix}_arena"

    @property
    def data_bytes(self) -> int:
        """Flash bytes of all constant arrays (weights, biases, multipliers, shifts)."""
        return sum(self.symbols.values())


def _c_int(value: int) -> str:
    """An integer literal that is valid for any target int width (INT32_MIN has no literal)."""
    if value == INT32_MIN:
        return "(-2147483647 - 1)"
    return str(value)


def _c_array(name: str, array: CArray) -> str:
    values = [_c_int(int(v)) for v in array.values.tolist()]
    lines = [
        "    " + ", ".join(values[i : i + _VALUES_PER_LINE]) + ","
        for i in range(0, len(values), _VALUES_PER_LINE)
    ]
    body = "\n".join(lines)
    return f"const {array.ctype} {name}[{len(values)}] = {{\n{body}\n}};\n"


def _check_model(qmodel: QuantizedMLP) -> None:
    """Reject models the C code could not compute exactly; messages name layer and field."""
    if not qmodel.layers:
        raise DeploymentError("the model has no layers")
    if not INT8_MIN <= int(qmodel.input_zero_point) <= INT8_MAX:
        raise DeploymentError(f"input zero point {qmodel.input_zero_point} is outside int8")
    scale = float(qmodel.input_scale)
    if not np.isfinite(scale) or scale <= 0:
        raise DeploymentError(f"input scale {qmodel.input_scale} must be a finite positive number")
    previous = qmodel.layers[0].in_features
    for i, layer in enumerate(qmodel.layers):
        out = layer.out_features
        if layer.in_features != previous:
            raise DeploymentError(
                f"layer {i} takes {layer.in_features} inputs but the previous layer gives {previous}"
            )
        previous = out
        for name, arr in (("bias", layer.bias), ("multiplier", layer.multiplier)):
            a = np.asarray(arr)
            if a.shape != (out,):
                raise DeploymentError(f"layer {i}: {name} has shape {a.shape}, expected ({out},)")
            if not np.issubdtype(a.dtype, np.integer):
                raise DeploymentError(f"layer {i}: {name} must be integer, got {a.dtype}")
            if a.size and (int(a.min()) < INT32_MIN or int(a.max()) > INT32_MAX):
                raise DeploymentError(f"layer {i}: {name} values exceed the int32 range")
        shift = np.asarray(layer.shift)
        if shift.shape != (out,) or not np.issubdtype(shift.dtype, np.integer):
            raise DeploymentError(f"layer {i}: shift must be an integer array of shape ({out},)")
        if int(np.abs(shift.astype(np.int64)).max()) > MAX_SHIFT:
            raise DeploymentError(f"layer {i}: shifts must lie in [-{MAX_SHIFT}, {MAX_SHIFT}]")
        if not INT8_MIN <= int(layer.output_zero_point) <= INT8_MAX:
            raise DeploymentError(
                f"layer {i}: output zero point {layer.output_zero_point} is outside int8"
            )
    if qmodel.layers[-1].out_features > 32767:
        raise DeploymentError("more than 32767 outputs: predict returns a (possibly 16-bit) int")


_READ_BITS = """\
/* Field `index` of `width` bits (1..8) of an LSB-first bit stream. A field straddles at most
 * two bytes; the second is read only when needed so the last byte is never overrun. */
static uint32_t {p}_read_bits(const uint8_t *stream, uint32_t index, uint32_t width)
{{
    uint32_t bit = index * width;
    uint32_t byte = bit >> 3;
    uint32_t offset = bit & 7u;
    uint32_t value = (uint32_t)stream[byte] >> offset;
    if (offset + width > 8u) {{
        value |= (uint32_t)stream[byte + 1u] << (8u - offset);
    }}
    return value & ((1u << width) - 1u);
}}
"""

_HUFFMAN_READ = """\
/* Index, in canonical order, of the next symbol of a canonical Huffman code whose lengths
 * 1..max_length have counts[0..max_length-1] codes; reads one bit at a time from `*bit` on
 * (codes are stored MSB first in the LSB-first stream). */
static uint32_t {p}_huffman_read(const uint8_t *stream, uint32_t *bit, const uint8_t *counts,
    uint32_t max_length)
{{
    uint32_t code = 0u;
    uint32_t first = 0u;
    uint32_t index = 0u;
    uint32_t length;
    for (length = 0u; length < max_length; ++length) {{
        uint32_t count = (uint32_t)counts[length];
        code |= ((uint32_t)stream[*bit >> 3] >> (*bit & 7u)) & 1u;
        *bit += 1u;
        if (code - first < count) {{ /* codes of this length are first .. first + count - 1 */
            return index + (code - first);
        }}
        index += count;
        first = (first + count) << 1;
        code <<= 1;
    }}
    return 0u; /* not reached for a stream written by prunekit */
}}
"""

_REQUANT = """\
/* int32 row sum -> int8 activation, exactly TFLite's MultiplyByQuantizedMultiplier
 * (SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT) as in qmodel.py. */
static int8_t {p}_requant(int32_t sum, int32_t bias, int32_t multiplier, int32_t shift,
    int32_t zero_point, int32_t low)
{{
    int64_t x = (int64_t)sum + (int64_t)bias;
    int64_t high;
    int64_t quotient;
    int64_t remainder;
    int64_t mask;
    int64_t threshold;
    int32_t left = shift > 0 ? shift : 0;
    int32_t right = shift > 0 ? 0 : -shift;
    /* the reference sums in int64 and clips to int32 */
    if (x > INT32_MAX) {{
        x = INT32_MAX;
    }} else if (x < INT32_MIN) {{
        x = INT32_MIN;
    }}
    x *= (int64_t)1 << left; /* a multiplication: left-shifting a negative value is undefined */
    if (x > INT32_MAX) {{
        x = INT32_MAX;
    }} else if (x < INT32_MIN) {{
        x = INT32_MIN;
    }}
    if (x == INT32_MIN && multiplier == INT32_MIN) {{
        high = INT32_MAX;
    }} else {{
        int64_t product = x * (int64_t)multiplier;
        int64_t nudge = product >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
        high = (product + nudge) / ((int64_t)1 << 31); /* C99 division truncates toward zero */
    }}
    /* floor(high / 2^right) without right-shifting a negative number */
    mask = ((int64_t)1 << right) - 1;
    quotient = high >= 0 ? high >> right : -((-high - 1) >> right) - 1;
    remainder = high - quotient * (mask + 1);
    threshold = (mask >> 1) + (high < 0 ? 1 : 0);
    if (remainder > threshold) {{
        quotient += 1;
    }}
    quotient += zero_point;
    if (quotient < low) {{
        quotient = low;
    }} else if (quotient > 127) {{
        quotient = 127;
    }}
    return (int8_t)quotient;
}}
"""


class _LayerWriter:
    """Emits the static kernel of one layer for its encoding."""

    def __init__(
        self,
        prefix: str,
        index: int,
        enc: EncodedWeights,
        zero_point: int,
        relu: bool,
        per_row: dict[str, bool],
    ):
        self.p = prefix
        self.index = index
        self.enc = enc
        self.per_row = per_row  # row array name -> one element per row (else one for all)
        self.name = f"{prefix}_l{index}"
        self.out, self.inp = enc.shape
        self.low = zero_point if relu else INT8_MIN
        self.zero_point = zero_point

    def finish(self, row: str, indent: str) -> str:
        def read(array: str) -> str:
            return f"(int32_t){self.name}_{array}[{row if self.per_row[array] else '0'}]"

        return (
            f"{indent}y[{row}] = {self.p}_requant(acc, {read('bias')}, {read('mult')},"
            f" {read('shift')}, {_c_int(self.zero_point)}, {_c_int(self.low)});\n"
        )

    def value(self, slot: str) -> str:
        """C expression of stored value number ``slot`` as int32."""
        if self.enc.codebook:
            bits = self.enc.params["bits"]
            return f"(int32_t){self.name}_codebook[{self.p}_read_bits({self.name}_codes, {slot}, {bits}u)]"
        return f"(int32_t){self.name}_values[{slot}]"

    def kernel(self) -> str:
        head = (
            f"/* layer {self.index}: {self.out}x{self.inp}, {self.enc.format}"
            f" {self.enc.params}, {self.enc.nbytes} weight bytes */\n"
            f"static void {self.name}_forward(const int8_t *x, int8_t *y)\n{{\n"
        )
        if self.enc.params["stored"] == 0:
            # no weight stored at all: every row is its requantised bias
            body = (
                "    uint32_t o;\n    int32_t acc = 0;\n    (void)x;\n"
                f"    for (o = 0u; o < {self.out}u; ++o) {{\n"
                + self.finish("o", "        ")
                + "    }\n"
            )
            return head + body + "}\n"
        base = self.enc.base_format
        if base == "dense":
            body = (
                "    uint32_t o;\n    uint32_t i;\n    uint32_t slot = 0u;\n"
                f"    for (o = 0u; o < {self.out}u; ++o) {{\n"
                "        int32_t acc = 0;\n"
                f"        for (i = 0u; i < {self.inp}u; ++i, ++slot) {{\n"
                f"            acc += {self.value('slot')} * (int32_t)x[i];\n"
                "        }\n" + self.finish("o", "        ") + "    }\n"
            )
        elif base == "bitmask":
            body = (
                "    uint32_t o;\n    uint32_t i;\n    uint32_t bit = 0u;\n    uint32_t slot = 0u;\n"
                f"    for (o = 0u; o < {self.out}u; ++o) {{\n"
                "        int32_t acc = 0;\n"
                f"        for (i = 0u; i < {self.inp}u; ++i, ++bit) {{\n"
                f"            if (({self.name}_mask[bit >> 3] >> (bit & 7u)) & 1u) {{\n"
                f"                acc += {self.value('slot')} * (int32_t)x[i];\n"
                "                ++slot;\n"
                "            }\n"
                "        }\n" + self.finish("o", "        ") + "    }\n"
            )
        elif base == "csr":
            body = (
                "    uint32_t o;\n    uint32_t slot;\n"
                f"    for (o = 0u; o < {self.out}u; ++o) {{\n"
                "        int32_t acc = 0;\n"
                f"        uint32_t end = (uint32_t){self.name}_row_ptr[o + 1u];\n"
                f"        for (slot = (uint32_t){self.name}_row_ptr[o]; slot < end; ++slot) {{\n"
                f"            acc += {self.value('slot')} * (int32_t)x[{self.name}_cols[slot]];\n"
                "        }\n" + self.finish("o", "        ") + "    }\n"
            )
        elif base == "relative":
            k = self.enc.params["k"]
            # (o, col) is the flattened position o * in + col of the next entry; a gap that
            # crosses row ends finishes those rows (rows without entries get their bias only).
            body = (
                f"    uint32_t count = (uint32_t){self.name}_count[0];\n"
                "    uint32_t slot;\n    uint32_t o = 0u;\n    uint32_t col = 0u;\n"
                "    int32_t acc = 0;\n"
                "    for (slot = 0u; slot < count; ++slot) {\n"
                f"        col += {self.p}_read_bits({self.name}_gaps, slot, {k}u);\n"
                f"        while (col >= {self.inp}u) {{\n"
                + self.finish("o", "            ")
                + "            ++o;\n            acc = 0;\n"
                f"            col -= {self.inp}u;\n"
                "        }\n"
                f"        acc += {self.value('slot')} * (int32_t)x[col];\n"
                "        ++col;\n"
                "    }\n"
                f"    for (; o < {self.out}u; ++o) {{\n"
                + self.finish("o", "        ")
                + "        acc = 0;\n    }\n"
            )
        elif base == "huffman":
            span = self.enc.params["span"]
            gap_length = self.enc.array("gap_counts").values.size
            value_length = self.enc.array("value_counts").values.size
            n = self.name
            # as ``relative``, but an escape symbol (gap == span) advances without a value
            body = (
                f"    uint32_t count = (uint32_t){n}_count[0];\n"
                "    uint32_t slot;\n    uint32_t bit = 0u;\n    uint32_t o = 0u;\n"
                "    uint32_t col = 0u;\n    int32_t acc = 0;\n"
                "    for (slot = 0u; slot < count; ++slot) {\n"
                f"        uint32_t gap = (uint32_t){n}_gap_symbols[{self.p}_huffman_read({n}_stream,"
                f" &bit, {n}_gap_counts, {gap_length}u)];\n"
                "        col += gap;\n"
                f"        while (col >= {self.inp}u) {{\n"
                + self.finish("o", "            ")
                + "            ++o;\n            acc = 0;\n"
                f"            col -= {self.inp}u;\n"
                "        }\n"
                f"        if (gap == {span}u) {{\n            continue;\n        }}\n"
                f"        acc += (int32_t){n}_value_symbols[{self.p}_huffman_read({n}_stream, &bit,"
                f" {n}_value_counts, {value_length}u)] * (int32_t)x[col];\n"
                "        ++col;\n"
                "    }\n"
                f"    for (; o < {self.out}u; ++o) {{\n"
                + self.finish("o", "        ")
                + "        acc = 0;\n    }\n"
            )
        else:
            raise DeploymentError(f"layer {self.index}: no C kernel for format {self.enc.format!r}")
        return head + body + "}\n"


def generate_c(
    qmodel: QuantizedMLP,
    encodings: Sequence[EncodedWeights] | None = None,
    prefix: str = "prunekit_model",
) -> CSource:
    """C99 header and source computing ``integer_forward(qmodel, x)`` exactly.

    ``encodings`` (one per layer) forces the weight formats; by default each layer gets its
    smallest encoding (``storage.model_storage``). The arrays of an encoding are emitted as
    ``<prefix>_l<i>_<suffix>``, plus ``_bias``, ``_mult``, ``_shift`` (``storage.row_arrays``:
    the narrowest exact integer type, one element when all rows share the value).
    """
    if not _IDENTIFIER.match(prefix):
        raise DeploymentError(f"prefix {prefix!r} is not a C identifier")
    _check_model(qmodel)
    encs = list(encodings) if encodings is not None else model_storage(qmodel)
    if len(encs) != len(qmodel.layers):
        raise DeploymentError(f"{len(encs)} encodings for a model of {len(qmodel.layers)} layers")
    for i, (layer, enc) in enumerate(zip(qmodel.layers, encs, strict=True)):
        if enc.shape != tuple(layer.weight.shape):
            raise DeploymentError(
                f"layer {i}: encoding shape {enc.shape} != weight shape {tuple(layer.weight.shape)}"
            )
        if not np.array_equal(enc.decode(), np.asarray(layer.weight)):
            raise DeploymentError(
                f"layer {i}: the {enc.format} encoding does not decode to its weights"
            )

    layers = qmodel.layers
    upper = prefix.upper()
    hidden = [layer.out_features for layer in layers[:-1]]
    if not hidden:
        arena = 0
    elif len(hidden) == 1:
        arena = hidden[0]
    else:
        arena = max(a + b for a, b in pairwise(hidden))
    # hidden activation j (output of layer j): even j at the arena start, odd j at its end
    offsets = [0 if j % 2 == 0 else arena - width for j, width in enumerate(hidden)]

    symbols: dict[str, int] = {}
    data: list[str] = []

    def emit(name: str, array: CArray) -> None:
        if array.values.size == 0:
            return  # C has no empty arrays; the kernel of an empty encoding reads none
        data.append(_c_array(name, array))
        symbols[name] = array.nbytes

    uses_bits = uses_huffman = False
    kernels: list[str] = []
    for i, (layer, enc) in enumerate(zip(layers, encs, strict=True)):
        name = f"{prefix}_l{i}"
        for array in enc.arrays:
            emit(f"{name}_{array.name_suffix}", array)
        rows = row_arrays(layer)
        for array in rows:
            emit(f"{name}_{array.name_suffix}", array)
        accounted = layer_bytes(layer, enc, i)
        assert [symbols[f"{name}_{a.name_suffix}"] for a in rows] == [
            accounted.bias,
            accounted.multiplier,
            accounted.shift,
        ]
        if enc.params["stored"] and (enc.codebook or enc.base_format == "relative"):
            uses_bits = True
        if enc.params["stored"] and enc.format == "huffman":
            uses_huffman = True
        per_row = {a.name_suffix: a.values.size == layer.out_features for a in rows}
        writer = _LayerWriter(
            prefix, i, enc, int(layer.output_zero_point), bool(layer.relu), per_row
        )
        kernels.append(writer.kernel())

    calls: list[str] = []
    for i in range(len(layers)):
        src = "input" if i == 0 else f"{prefix}_arena + {offsets[i - 1]}"
        dst = "logits" if i == len(layers) - 1 else f"{prefix}_arena + {offsets[i]}"
        calls.append(f"    {prefix}_l{i}_forward({src}, {dst});\n")

    widths = "-".join(str(w) for w in [layers[0].in_features, *(la.out_features for la in layers)])
    data_bytes = sum(symbols.values())
    summary = (
        f" * Model {widths}, int8 weights and activations, integer-only arithmetic.\n"
        f" * Flash: {data_bytes} bytes of constant arrays (weights, biases, multipliers and\n"
        f" * shifts), plus code.\n"
        f" * RAM: a static arena of {arena} bytes holding two ping-pong activation buffers\n"
        f" * (max over consecutive hidden layers of the sum of their widths), plus\n"
        f" * {upper}_OUTPUT_SIZE bytes of stack in {prefix}_predict.\n"
    )
    scale = float(qmodel.input_scale)
    header = (
        f"/* Generated by prunekit.mcu.c_export; do not edit.\n{summary}"
        f" *\n * Quantise a float input x as\n"
        f" *     q = clamp(round(x / {scale!r}f) + {upper}_INPUT_ZERO_POINT, -128, 127)\n"
        f" * `input` and `logits` must not overlap. The arena is static: {prefix}_forward is\n"
        f" * not reentrant (do not call it from two threads or from an interrupt at once).\n */\n"
        f"#ifndef {upper}_H\n#define {upper}_H\n\n#include <stdint.h>\n\n"
        '#ifdef __cplusplus\nextern "C" {\n#endif\n\n'
        f"#define {upper}_INPUT_SIZE {layers[0].in_features}\n"
        f"#define {upper}_OUTPUT_SIZE {layers[-1].out_features}\n"
        f"#define {upper}_INPUT_ZERO_POINT ({int(qmodel.input_zero_point)})\n"
        f"#define {upper}_INPUT_SCALE {scale!r}f /* for the firmware only; the model uses no float */\n"
        f"#define {upper}_ARENA_BYTES {arena}\n\n"
        f"/* int8 input[{upper}_INPUT_SIZE] -> int8 logits[{upper}_OUTPUT_SIZE] */\n"
        f"void {prefix}_forward(const int8_t *input, int8_t *logits);\n\n"
        f"/* index of the largest logit, the lowest index on ties */\n"
        f"int {prefix}_predict(const int8_t *input);\n\n"
        "#ifdef __cplusplus\n}\n#endif\n\n"
        f"#endif /* {upper}_H */\n"
    )
    helpers = _REQUANT.format(p=prefix)
    if uses_bits:
        helpers = _READ_BITS.format(p=prefix) + "\n" + helpers
    if uses_huffman:
        helpers = _HUFFMAN_READ.format(p=prefix) + "\n" + helpers
    arena_decl = f"static int8_t {prefix}_arena[{arena}];\n\n" if arena else ""
    source = (
        f"/* Generated by prunekit.mcu.c_export; do not edit.\n{summary} */\n"
        f'#include "{prefix}.h"\n\n'
        "/* Constant data (flash). External linkage keeps every array in the object file with\n"
        " * exactly its accounted size, even where the optimiser could fold a read. */\n"
        + "\n".join(data)
        + "\n"
        + arena_decl
        + helpers
        + "\n"
        + "\n".join(kernels)
        + f"\nvoid {prefix}_forward(const int8_t *input, int8_t *logits)\n{{\n"
        + "".join(calls)
        + "}\n\n"
        + f"int {prefix}_predict(const int8_t *input)\n{{\n"
        + f"    int8_t logits[{upper}_OUTPUT_SIZE];\n"
        + "    int best = 0;\n    int i;\n"
        + f"    {prefix}_forward(input, logits);\n"
        + f"    for (i = 1; i < {upper}_OUTPUT_SIZE; ++i) {{\n"
        + "        if (logits[i] > logits[best]) {\n            best = i;\n        }\n    }\n"
        + "    return best;\n}\n"
    )
    return CSource(header, source, arena, symbols, prefix, encs)
