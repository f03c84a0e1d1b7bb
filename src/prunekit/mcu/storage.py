"""Compact flash encodings of sparse int8 weight matrices, with exact byte accounting.

A pruned layer is mostly zeros, and the microcontroller's flash, not its compute, is usually
what a model must fit. Each encoding here is a handful of flat arrays (``CArray``) that the
generated C code (``prunekit.mcu.c_export``) emits verbatim as constant arrays, so the byte count
reported here *is* the size of the symbols in the object file; ``tests/test_mcu_c_export.py``
checks this with ``nm``.

All formats traverse the weight matrix ``W[out, in]`` in row-major order, because the C kernel
streams over the stored entries once, keeping a single int32 accumulator for the current row.

Formats (``FORMATS``):

``dense``
    ``values``: int8 ``[out * in]``.
``bitmask``
    ``mask``: one bit per element (1 = non-zero), bit-packed LSB-first into uint8;
    ``values``: the int8 non-zeros in row-major order.
``relative`` (parameter ``k``, 1..8)
    Deep Compression's relative indexing (Han et al., ICLR 2016). Every stored entry has a
    *gap*, the number of zeros skipped since the previous stored entry in the row-major
    flattened matrix (rows are not restarted), stored in ``k`` bits, and an int8 value.
    A gap larger than ``2**k - 1`` is bridged by *filler* entries of value 0, each advancing
    ``2**k`` positions. Arrays: ``count`` (number of entries incl. fillers, one uint16 if it
    fits else one uint32), ``gaps`` (k-bit fields, bit-packed), ``values`` (int8).
    Trailing zeros after the last non-zero need no entries: the decoder knows the shape.
``csr``
    ``row_ptr`` (``out + 1`` entries, uint16 if ``nnz < 65536`` else uint32), ``cols``
    (uint8 if ``in <= 256`` else uint16), ``values`` (int8).
``<format>_cb`` (parameter ``bits``, 1..8), for each of the above
    Deep Compression's weight sharing: the stored values are replaced by ``bits``-bit codes
    (``codes``, bit-packed LSB-first) into a per-layer int8 ``codebook`` of ``2**bits``
    entries. The codebook is the sorted distinct *stored* values, padded with zeros. Zero is a
    stored value -- and therefore takes a code -- only where the format stores zeros: every
    pruned weight in ``dense_cb`` and the filler entries of ``relative_cb``. So a layer
    fine-tuned to 16 distinct non-zero values fits 4-bit ``bitmask_cb``/``csr_cb`` codes, but
    needs 5-bit ``relative_cb`` codes as soon as a filler is needed (a producer targeting
    ``relative_cb`` with 4 bits should allow at most 15 non-zero values per layer).

``huffman`` (parameter ``span``, 2..127)
    Deep Compression's last stage: relative indexing with canonical Huffman codes for the gaps
    and for the non-zero values (``prunekit.mcu.huffman``). Each non-zero is a gap symbol
    (the zeros skipped since the previous one, ``0 .. span - 1``) followed by a value symbol
    (the int8 value itself: with shared weights only a handful occur). A gap of ``span`` or
    more is preceded by *escape* symbols (the gap symbol ``span``), each advancing ``span``
    positions without a value. Arrays: ``count`` (gap symbols incl. escapes, as in
    ``relative``), ``stream`` (all codes, bit-packed LSB-first, each code MSB-first),
    ``gap_counts`` / ``value_counts`` (uint8: codes of length 1, 2, ...) and ``gap_symbols``
    (uint8) / ``value_symbols`` (int8) in canonical order. The decoder reads one bit at a
    time, slower than the fixed-width formats, which is the usual trade when flash is the
    budget.

Bit-packing is one contiguous LSB-first bit stream: field ``i`` of width ``w`` occupies stream
bits ``[i*w, (i+1)*w)``, and stream bit ``j`` is bit ``j % 8`` of byte ``j // 8``; fields
may straddle a byte boundary (never more than two bytes since ``w <= 8``).

Besides the weights, each layer stores its requantisation parameters (``row_arrays``): a bias,
a Q31 multiplier and a shift per output row. Each is stored in the narrowest of int8 / int16 /
int32 that holds all its values exactly, and as a single element when every row has the same
value -- the usual case for the multiplier and shift of a layer quantised with one weight scale
(weight sharing does that), which saves 5 bytes per neuron. ``storage_report`` adds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from prunekit.errors import DeploymentError
from prunekit.mcu import huffman
from prunekit.mcu.qmodel import QuantizedLinear, QuantizedMLP

BASE_FORMATS: tuple[str, ...] = ("dense", "bitmask", "csr", "relative")
CODEBOOK_FORMATS: tuple[str, ...] = tuple(f"{name}_cb" for name in BASE_FORMATS)
ENTROPY_FORMATS: tuple[str, ...] = ("huffman",)
# The order is the tie-break of ``best_encoding``: simpler formats (cheaper to decode) first.
FORMATS: tuple[str, ...] = (*BASE_FORMATS, *CODEBOOK_FORMATS, *ENTROPY_FORMATS)

CTYPE_BYTES: dict[str, int] = {
    "int8_t": 1,
    "uint8_t": 1,
    "int16_t": 2,
    "uint16_t": 2,
    "uint32_t": 4,
    "int32_t": 4,
}
_CTYPE_DTYPES: dict[str, type[np.generic]] = {
    "int8_t": np.int8,
    "uint8_t": np.uint8,
    "int16_t": np.int16,
    "uint16_t": np.uint16,
    "uint32_t": np.uint32,
    "int32_t": np.int32,
}

# Per output row, next to the weights, at most: the C code reads these three arrays
# (``row_arrays``), each narrowed or collapsed to one element when its values allow.
BIAS_BYTES = 4  # int32 bias with the input zero point folded in
MULTIPLIER_BYTES = 4  # int32 Q31 multiplier
SHIFT_BYTES = 1  # shifts lie in [-31, 31], so int8 is exact
ROW_BYTES = BIAS_BYTES + MULTIPLIER_BYTES + SHIFT_BYTES
# A layer whose rows share one multiplier and shift (one weight scale): a bias per row, at most
# int32, plus one multiplier and one shift.
SHARED_SCALE_ROW_BYTES = BIAS_BYTES
SHARED_SCALE_LAYER_BYTES = MULTIPLIER_BYTES + SHIFT_BYTES
ROW_ARRAY_NAMES = ("bias", "mult", "shift")
_SIGNED_TYPES = (("int8_t", -(2**7), 2**7 - 1), ("int16_t", -(2**15), 2**15 - 1),
                 ("int32_t", -(2**31), 2**31 - 1))  # fmt: skip

MAX_SHIFT = 31
# The int32 row accumulator must not overflow: |sum_i W x| <= in * 128 * 128 < 2**31.
MAX_IN_FEATURES = (2**31 - 1) // (128 * 128)
# The C decoder addresses bit-packed fields with uint32 bit offsets (at most 8 bits per element).
MAX_ELEMENTS = 2**29
RELATIVE_K_RANGE = range(1, 9)
HUFFMAN_SPAN_RANGE = range(2, 128)  # the escape symbol ``span`` must fit the uint8 gap symbols
HUFFMAN_SPANS = (4, 8, 16, 32, 64, 127)  # tried by ``encode`` when no span is given
CODEBOOK_BITS_RANGE = range(1, 9)


@dataclass
class CArray:
    """One flat constant array of an encoding, emitted as ``<prefix>_l<i>_<name_suffix>``."""

    name_suffix: str
    ctype: str  # one of CTYPE_BYTES
    values: np.ndarray  # 1-D, already of the numpy dtype matching ctype

    def __post_init__(self) -> None:
        if self.ctype not in CTYPE_BYTES:
            raise DeploymentError(f"unsupported C array type {self.ctype!r} for {self.name_suffix}")
        raw = np.asarray(self.values).ravel()
        converted = np.ascontiguousarray(raw, dtype=_CTYPE_DTYPES[self.ctype])
        # a silent wrap-around (say a shift of 200 stored as int8) would corrupt the model
        if raw.size and not np.array_equal(converted.astype(np.int64), raw.astype(np.int64)):
            raise DeploymentError(f"values of {self.name_suffix} do not fit {self.ctype}")
        self.values = converted

    @property
    def nbytes(self) -> int:
        """Bytes of the array in flash (element count times element size, no padding)."""
        return int(self.values.size) * CTYPE_BYTES[self.ctype]


@dataclass
class EncodedWeights:
    """A weight matrix ``[out, in]`` in one storage format.

    ``params`` holds the format's parameters (``k``, ``bits``) and counts that the decoder needs
    or that explain the size: ``nnz`` (non-zero weights) always, ``entries`` (stored entries incl.
    fillers) for relative formats, ``stored`` (number of value slots) always.
    """

    format: str
    params: dict[str, int]
    arrays: list[CArray]
    shape: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def array(self, suffix: str) -> CArray:
        """The array named ``suffix`` (``values``, ``gaps``, ...)."""
        for a in self.arrays:
            if a.name_suffix == suffix:
                return a
        raise DeploymentError(f"{self.format} encoding has no array {suffix!r}")

    @property
    def base_format(self) -> str:
        return self.format.removesuffix("_cb")

    @property
    def codebook(self) -> bool:
        return self.format.endswith("_cb")

    def stored_values(self) -> np.ndarray:
        """The int64 value of every stored slot, after the codebook lookup if any."""
        count = self.params["stored"]
        if self.format == "huffman":
            return self._huffman_entries()[1]
        if not self.codebook:
            return self.array("values").values.astype(np.int64)
        bits = self.params["bits"]
        codes = unpack_bits(self.array("codes").values, bits, count)
        return self.array("codebook").values.astype(np.int64)[codes]

    def decode(self) -> np.ndarray:
        """Back to the dense int8 ``[out, in]`` matrix, independently of the C decoder."""
        out, inp = self.shape
        flat = np.zeros(out * inp, dtype=np.int64)
        values = self.stored_values()
        base = self.base_format
        if base == "dense":
            flat[:] = values
        elif base == "bitmask":
            mask = np.unpackbits(self.array("mask").values, count=out * inp, bitorder="little")
            positions = np.flatnonzero(mask)
            if positions.size != values.size:
                raise DeploymentError("bitmask encoding: mask bits and value count disagree")
            flat[positions] = values
        elif base == "relative":
            entries = self.params["entries"]
            if int(self.array("count").values[0]) != entries:
                raise DeploymentError("relative encoding: stored entry count is inconsistent")
            if entries:
                gaps = unpack_bits(self.array("gaps").values, self.params["k"], entries)
                positions = np.cumsum(gaps + 1) - 1
                if positions[-1] >= out * inp:
                    raise DeploymentError("relative encoding: gaps run past the matrix end")
                flat[positions] = values
        elif base == "huffman":
            positions, values = self._huffman_entries()
            if positions.size and positions[-1] >= out * inp:
                raise DeploymentError("huffman encoding: gaps run past the matrix end")
            flat[positions] = values
        elif base == "csr":
            row_ptr = self.array("row_ptr").values.astype(np.int64)
            rows = np.repeat(np.arange(out), np.diff(row_ptr))
            cols = self.array("cols").values.astype(np.int64)
            flat[rows * inp + cols] = values
        else:
            raise DeploymentError(f"unknown weight format {self.format!r}")
        return flat.reshape(out, inp).astype(np.int8)

    def _huffman_entries(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat positions and values of the non-zeros, read the way the C decoder reads them."""
        entries = self.params["entries"]
        if int(self.array("count").values[0]) != entries:
            raise DeploymentError("huffman encoding: stored entry count is inconsistent")
        if entries == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        span = self.params["span"]
        gap_code = _stored_code(self, "gap")
        value_code = _stored_code(self, "value")
        reader = huffman.BitReader(self.array("stream").values)
        positions, values = [], []
        position = 0
        for _ in range(entries):
            gap = reader.symbol(gap_code)
            position += gap
            if gap == span:
                continue
            positions.append(position)
            values.append(reader.symbol(value_code))
            position += 1
        return np.array(positions, dtype=np.int64), np.array(values, dtype=np.int64)


def _stored_code(enc: EncodedWeights, name: str) -> huffman.CanonicalCode:
    """The canonical code of ``enc``'s ``<name>_counts`` and ``<name>_symbols`` arrays."""
    counts = enc.array(f"{name}_counts").values.astype(np.int64)
    symbols = enc.array(f"{name}_symbols").values.astype(np.int64)
    if int(counts.sum()) != symbols.size:
        raise DeploymentError(f"huffman encoding: {name} code counts and symbols disagree")
    lengths = np.repeat(np.arange(1, counts.size + 1), counts)
    return huffman.canonical_code(symbols, lengths)


def _huffman_arrays(flat: np.ndarray, span: int) -> tuple[list[CArray], dict[str, int]]:
    """Arrays and counts of the ``huffman`` format of a flattened int8 matrix."""
    if not flat.any():
        return [_count_array(0)], {"span": span, "entries": 0}
    symbols, last = _gap_entries(flat, span, filler=span)  # escapes carry no value
    total = int(symbols.size)
    values = flat[flat != 0].astype(np.int64)
    gap_code = huffman.build_code(symbols)
    value_code = huffman.build_code(values)
    gap_bits, gap_lengths = gap_code.lookup(symbols)
    value_bits, value_lengths = value_code.lookup(values)
    # interleave: every gap code, followed by its value code unless it is an escape
    codes = np.zeros(total + values.size, dtype=np.int64)
    lengths = np.zeros_like(codes)
    gap_slot = np.arange(total) + np.concatenate([[0], np.cumsum(symbols != span)[:-1]])
    codes[gap_slot], lengths[gap_slot] = gap_bits, gap_lengths
    value_slot = gap_slot[last] + 1
    codes[value_slot], lengths[value_slot] = value_bits, value_lengths
    stream, _ = huffman.write_bits(codes, lengths)
    arrays = [
        _count_array(total),
        CArray("stream", "uint8_t", stream),
        CArray("gap_counts", "uint8_t", gap_code.counts),
        CArray("gap_symbols", "uint8_t", gap_code.symbols),
        CArray("value_counts", "uint8_t", value_code.counts),
        CArray("value_symbols", "int8_t", value_code.symbols),
    ]
    return arrays, {"span": span, "entries": total}


def pack_bits(fields: np.ndarray, width: int) -> np.ndarray:
    """Unsigned fields of ``width`` bits -> LSB-first contiguous bit stream in uint8 bytes."""
    fields = np.asarray(fields, dtype=np.int64).ravel()
    if fields.size and (fields.min() < 0 or fields.max() >= 1 << width):
        raise DeploymentError(f"a field does not fit in {width} bits")
    bits = ((fields[:, None] >> np.arange(width)) & 1).astype(np.uint8).ravel()
    return np.packbits(bits, bitorder="little")


def unpack_bits(stream: np.ndarray, width: int, count: int) -> np.ndarray:
    """Inverse of ``pack_bits``: the first ``count`` fields of ``width`` bits, as int64."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    bits = np.unpackbits(np.asarray(stream, dtype=np.uint8), count=count * width, bitorder="little")
    return bits.reshape(count, width).astype(np.int64) @ (np.int64(1) << np.arange(width))


def _packed_bytes(count: int, width: int) -> int:
    return (count * width + 7) // 8


def _check_weight(weight: np.ndarray) -> np.ndarray:
    """Validate and return ``weight`` as a 2-D int8 array (integers in [-128, 127] accepted)."""
    w = np.asarray(weight)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise DeploymentError(
            f"weight must be a non-empty 2-D matrix [out, in], got shape {w.shape}"
        )
    if not np.issubdtype(w.dtype, np.integer):
        raise DeploymentError(f"weight must hold int8 integers, got dtype {w.dtype}")
    if w.size and (int(w.min()) < -128 or int(w.max()) > 127):
        raise DeploymentError("weight values must lie in the int8 range [-128, 127]")
    if w.size >= MAX_ELEMENTS:
        raise DeploymentError(
            f"weight matrix {w.shape} is too large: bit offsets must fit 32 bits in the C decoder"
        )
    if w.shape[1] > MAX_IN_FEATURES:
        raise DeploymentError(
            f"in_features {w.shape[1]} exceeds {MAX_IN_FEATURES}: the int32 row sum could overflow"
        )
    return w.astype(np.int8)


def _gap_entries(flat: np.ndarray, span: int, filler: int) -> tuple[np.ndarray, np.ndarray]:
    """Gap symbols of the non-zeros of ``flat`` in order, a gap of ``span`` or more preceded by
    filler entries (symbol ``filler``), each advancing ``span`` positions; and the entry index
    of every non-zero. Shared by ``relative`` (fillers are zero values) and ``huffman``
    (fillers are escape symbols without a value)."""
    positions = np.flatnonzero(flat)
    gaps = np.diff(positions, prepend=-1) - 1
    fillers = gaps // span
    per_entry = fillers + 1  # each non-zero is preceded by its fillers
    symbols = np.full(int(per_entry.sum()), filler, dtype=np.int64)
    real = np.cumsum(per_entry) - 1
    symbols[real] = gaps - fillers * span
    return symbols, real


def _relative_entries(flat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaps and values (fillers included) of relative indexing with ``k``-bit gaps: a filler
    is gap ``2**k - 1`` with value 0, covering its own position too."""
    gaps, real = _gap_entries(flat, 1 << k, (1 << k) - 1)
    values = np.zeros(gaps.size, dtype=np.int8)
    values[real] = flat[flat != 0]
    return gaps, values


def _count_array(entries: int) -> CArray:
    ctype = "uint16_t" if entries < 65536 else "uint32_t"
    return CArray("count", ctype, np.array([entries]))


def _value_arrays(values: np.ndarray, codebook: bool, bits: int | None) -> tuple[list[CArray], int]:
    """Store ``values`` plain (int8) or as codes into a codebook; returns arrays and bits used."""
    if not codebook:
        if bits is not None:
            raise DeploymentError("parameter 'bits' only applies to codebook (_cb) formats")
        return [CArray("values", "int8_t", values)], 0
    distinct = np.unique(values.astype(np.int64))
    needed = max(1, (distinct.size - 1).bit_length())
    if bits is None:
        bits = needed
    if bits not in CODEBOOK_BITS_RANGE:
        raise DeploymentError(f"codebook bits must be in 1..8, got {bits}")
    if distinct.size > 1 << bits:
        raise DeploymentError(
            f"{distinct.size} distinct stored values do not fit a {bits}-bit codebook"
            f" (at most {1 << bits})"
        )
    table = np.zeros(1 << bits, dtype=np.int8)
    table[: distinct.size] = distinct
    codes = np.searchsorted(distinct, values.astype(np.int64))
    return [
        CArray("codes", "uint8_t", pack_bits(codes, bits)),
        CArray("codebook", "int8_t", table),
    ], bits


def encode(weight: np.ndarray, format: str, **params: int | None) -> EncodedWeights:
    """Encode ``weight`` (int8 ``[out, in]``) in ``format`` (one of ``FORMATS``).

    Parameters: ``k`` (relative formats, 1..8; ``None`` or absent picks the smallest encoding),
    ``bits`` (codebook formats, 1..8; ``None`` or absent picks the fewest bits that fit) and
    ``span`` (``huffman``, 2..127; ``None`` or absent picks the smallest of ``HUFFMAN_SPANS``).
    """
    w = _check_weight(weight)
    if format not in FORMATS:
        raise DeploymentError(f"unknown weight format {format!r}; choose from {', '.join(FORMATS)}")
    allowed = {"bits"} if format.endswith("_cb") else set()
    if format.startswith("relative"):
        allowed.add("k")
    if format == "huffman":
        allowed.add("span")
    unknown = {name for name, value in params.items() if value is not None} - allowed
    if unknown:
        raise DeploymentError(f"format {format!r} takes no parameter {sorted(unknown)[0]!r}")
    k = params.get("k")
    bits = params.get("bits")
    if format.startswith("relative") and k is None:
        options: list[EncodedWeights] = []
        failure: DeploymentError | None = None
        for kk in RELATIVE_K_RANGE:
            try:
                options.append(encode(w, format, k=kk, bits=bits))
            except DeploymentError as exc:
                # a narrow k needs filler zeros, which may not fit the requested codebook
                failure = exc
        if not options:
            assert failure is not None
            raise failure
        return min(options, key=lambda e: (e.nbytes, e.params["k"]))

    out, inp = w.shape
    flat = w.ravel()
    nnz = int(np.count_nonzero(flat))
    if format == "huffman":
        span = params.get("span")
        if span is None:
            options = [encode(w, format, span=sp) for sp in HUFFMAN_SPANS]
            return min(options, key=lambda e: (e.nbytes, e.params["span"]))
        if span not in HUFFMAN_SPAN_RANGE:
            raise DeploymentError(
                f"huffman escape span must be in {HUFFMAN_SPAN_RANGE.start}.."
                f"{HUFFMAN_SPAN_RANGE.stop - 1}, got {span}"
            )
        arrays, counts = _huffman_arrays(flat, span)
        return EncodedWeights(format, {"nnz": nnz, "stored": nnz, **counts}, arrays, (out, inp))
    codebook = format.endswith("_cb")
    base = format.removesuffix("_cb")
    result_params: dict[str, int] = {"nnz": nnz}
    if base == "dense":
        stored = flat
        index_arrays: list[CArray] = []
    elif base == "bitmask":
        stored = flat[flat != 0]
        index_arrays = [CArray("mask", "uint8_t", np.packbits(flat != 0, bitorder="little"))]
    elif base == "csr":
        stored = flat[flat != 0]
        row_counts = np.count_nonzero(w, axis=1)
        row_ptr = np.concatenate([[0], np.cumsum(row_counts)])
        cols = np.nonzero(w)[1]
        index_arrays = [
            CArray("row_ptr", "uint16_t" if nnz < 65536 else "uint32_t", row_ptr),
            CArray("cols", "uint8_t" if inp <= 256 else "uint16_t", cols),
        ]
    else:  # relative
        assert k is not None
        if k not in RELATIVE_K_RANGE:
            raise DeploymentError(f"relative index width k must be in 1..8, got {k}")
        gaps, stored = _relative_entries(flat, k)
        result_params["k"] = k
        result_params["entries"] = int(gaps.size)
        index_arrays = [_count_array(int(gaps.size)), CArray("gaps", "uint8_t", pack_bits(gaps, k))]
    value_arrays, used_bits = _value_arrays(stored, codebook, bits)
    if codebook:
        result_params["bits"] = used_bits
    result_params["stored"] = int(stored.size)
    return EncodedWeights(format, result_params, [*index_arrays, *value_arrays], (out, inp))


def best_encoding(weight: np.ndarray, formats: Sequence[str] | None = None) -> EncodedWeights:
    """The smallest encoding over ``formats`` (default all) and their parameters.

    Codebook formats are tried with the fewest bits that fit, and only below 8 bits (an 8-bit
    codebook is never smaller than plain int8 values). Ties go to the format listed first in
    ``FORMATS`` (simpler to decode), then to the smaller ``k``.
    """
    w = _check_weight(weight)
    chosen = FORMATS if formats is None else tuple(formats)
    if not chosen:
        raise DeploymentError("best_encoding needs at least one format")
    for name in chosen:
        if name not in FORMATS:
            raise DeploymentError(
                f"unknown weight format {name!r}; choose from {', '.join(FORMATS)}"
            )
    candidates: list[EncodedWeights] = []
    for name in chosen:
        ks: Sequence[int | None] = RELATIVE_K_RANGE if name.startswith("relative") else [None]
        for k in ks:
            params: dict[str, int | None] = {} if k is None else {"k": k}
            try:
                enc = encode(w, name, **params)
            except DeploymentError:
                continue  # e.g. too many distinct values for a codebook
            if enc.codebook and enc.params["bits"] >= 8:
                continue
            candidates.append(enc)
    if not candidates:
        raise DeploymentError(
            f"no encoding among {', '.join(chosen)} applies (codebook formats need < 256 values)"
        )
    return min(
        candidates,
        key=lambda e: (e.nbytes, FORMATS.index(e.format), e.params.get("k", 0)),
    )


def compact_array(name: str, values: np.ndarray) -> CArray:
    """Signed integers as the smallest exact C array: one element when all are equal, in the
    narrowest signed type that holds them (int32 at most)."""
    v = np.asarray(values, dtype=np.int64).ravel()
    if v.size == 0:
        raise DeploymentError(f"{name}: no values")
    if np.all(v == v[0]):
        v = v[:1]
    low, high = int(v.min()), int(v.max())
    for ctype, lo, hi in _SIGNED_TYPES:
        if lo <= low and high <= hi:
            return CArray(name, ctype, v)
    raise DeploymentError(f"{name}: values exceed the int32 range")


def row_arrays(layer: QuantizedLinear) -> list[CArray]:
    """The layer's bias, multiplier and shift arrays (named ``bias``, ``mult``, ``shift``), as
    the C code stores them: each of length ``out`` or 1 (one value for every row)."""
    return [
        compact_array("bias", np.asarray(layer.bias)),
        compact_array("mult", np.asarray(layer.multiplier)),
        compact_array("shift", np.asarray(layer.shift)),
    ]


@dataclass
class LayerBytes:
    """Flash bytes of one layer, exactly as the generated C code stores them."""

    index: int
    shape: tuple[int, int]  # (out, in)
    format: str
    params: dict[str, int]
    weights: int  # all arrays of the weight encoding
    bias: int  # per output row, int8/int16/int32 (``row_arrays``)
    multiplier: int  # int32 per output row, or one for the layer
    shift: int  # int8 per output row, or one for the layer

    @property
    def total(self) -> int:
        return self.weights + self.bias + self.multiplier + self.shift


@dataclass
class StorageReport:
    """Per-layer and total flash bytes of a model's constant data (code not included)."""

    layers: list[LayerBytes] = field(default_factory=list)

    @property
    def weights(self) -> int:
        return sum(layer.weights for layer in self.layers)

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers)

    def table(self) -> str:
        """A plain-text table, one line per layer plus the total."""
        lines = [
            f"{'layer':>5} {'shape':>10} {'format':>12} {'weights':>8} {'other':>6} {'total':>8}"
        ]
        for lb in self.layers:
            shape = f"{lb.shape[0]}x{lb.shape[1]}"
            other = lb.bias + lb.multiplier + lb.shift
            lines.append(
                f"{lb.index:>5} {shape:>10} {lb.format:>12} {lb.weights:>8} {other:>6} {lb.total:>8}"
            )
        lines.append(f"{'total':>5} {'':>10} {'':>12} {self.weights:>8} {'':>6} {self.total:>8}")
        return "\n".join(lines)


def layer_bytes(layer: QuantizedLinear, encoding: EncodedWeights, index: int = 0) -> LayerBytes:
    """Exact flash bytes of ``layer`` stored with ``encoding``."""
    if encoding.shape != tuple(layer.weight.shape):
        raise DeploymentError(
            f"layer {index}: encoding shape {encoding.shape} != weight shape {layer.weight.shape}"
        )
    bias, mult, shift = row_arrays(layer)
    return LayerBytes(
        index=index,
        shape=encoding.shape,
        format=encoding.format,
        params=dict(encoding.params),
        weights=encoding.nbytes,
        bias=bias.nbytes,
        multiplier=mult.nbytes,
        shift=shift.nbytes,
    )


def model_storage(
    qmodel: QuantizedMLP, formats: Sequence[str] | None = None
) -> list[EncodedWeights]:
    """The best encoding of every layer's weights (see ``best_encoding``)."""
    return [best_encoding(layer.weight, formats) for layer in qmodel.layers]


def storage_report(
    qmodel: QuantizedMLP,
    encodings: Sequence[EncodedWeights] | None = None,
    formats: Sequence[str] | None = None,
) -> StorageReport:
    """Byte report of ``qmodel`` stored with ``encodings`` (default: ``model_storage``)."""
    encs = list(encodings) if encodings is not None else model_storage(qmodel, formats)
    if len(encs) != len(qmodel.layers):
        raise DeploymentError(f"{len(encs)} encodings for a model of {len(qmodel.layers)} layers")
    return StorageReport(
        [
            layer_bytes(layer, enc, i)
            for i, (layer, enc) in enumerate(zip(qmodel.layers, encs, strict=True))
        ]
    )
