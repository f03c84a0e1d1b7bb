"""Weight storage formats: lossless round trips, exact byte formulas, and the format choice."""

from __future__ import annotations

import heapq
from collections import Counter

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from prunekit.errors import DeploymentError
from prunekit.mcu.qmodel import QuantizedLinear, QuantizedMLP
from prunekit.mcu.storage import (
    BASE_FORMATS,
    CODEBOOK_FORMATS,
    FORMATS,
    CArray,
    EncodedWeights,
    best_encoding,
    compact_array,
    encode,
    model_storage,
    pack_bits,
    row_arrays,
    storage_report,
    unpack_bits,
)


def ceil8(bits: int) -> int:
    return (bits + 7) // 8


def reference_entries(flat: np.ndarray, span: int, filler: int) -> tuple[list[int], list[int]]:
    """Gap symbols and values, written as plainly as possible: a run of ``span`` or more zeros
    first emits fillers (symbol ``filler``, value 0), each covering ``span`` positions."""
    gaps: list[int] = []
    values: list[int] = []
    run = 0
    for v in flat.tolist():
        if v == 0:
            run += 1
            continue
        while run >= span:
            gaps.append(filler)
            values.append(0)
            run -= span
        gaps.append(run)
        values.append(v)
        run = 0
    return gaps, values


def reference_relative(flat: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """Han et al.'s relative indexing: a filler of value 0 covers 2**k positions (2**k - 1
    skipped zeros and its own, also zero, position)."""
    return reference_entries(flat, 2**k, 2**k - 1)


def huffman_cost(frequencies: list[int]) -> tuple[int, int]:
    """Total bits and longest code of an optimal prefix code, from the merges alone: each merge
    of weights a and b adds a + b bits (every symbol below it gets one bit longer)."""
    if len(frequencies) == 1:
        return frequencies[0], 1
    heap = [(f, 0) for f in frequencies]
    heapq.heapify(heap)
    bits = 0
    while len(heap) > 1:
        (a, da), (b, db) = heapq.heappop(heap), heapq.heappop(heap)
        bits += a + b
        heapq.heappush(heap, (a + b, max(da, db) + 1))
    return bits, heap[0][1]


def reference_huffman_bytes(flat: np.ndarray, span: int) -> int:
    """Escapes (symbol ``span``) carry no value: only the non-zeros have value codes."""
    symbols, stored = reference_entries(flat, span, span)
    values = [v for v in stored if v != 0]
    if not symbols:
        return 2
    gap_bits, gap_depth = huffman_cost(list(Counter(symbols).values()))
    value_bits, value_depth = huffman_cost(list(Counter(values).values()))
    tables = gap_depth + len(set(symbols)) + value_depth + len(set(values))
    return (2 if len(symbols) < 65536 else 4) + ceil8(gap_bits + value_bits) + tables


def expected_bytes(w: np.ndarray, enc: EncodedWeights) -> int:
    """The byte formula of each format, computed from the matrix and not from the arrays."""
    out, inp = w.shape
    flat = w.ravel()
    nnz = int(np.count_nonzero(flat))
    base = enc.format.removesuffix("_cb")
    if base == "huffman":
        return reference_huffman_bytes(flat, enc.params["span"])
    if base == "dense":
        index, stored = 0, flat.tolist()
    elif base == "bitmask":
        index, stored = ceil8(out * inp), flat[flat != 0].tolist()
    elif base == "csr":
        index = (out + 1) * (2 if nnz < 65536 else 4) + nnz * (1 if inp <= 256 else 2)
        stored = flat[flat != 0].tolist()
    else:
        k = enc.params["k"]
        gaps, stored = reference_relative(flat, k)
        index = (2 if len(gaps) < 65536 else 4) + ceil8(len(gaps) * k)
    if not enc.format.endswith("_cb"):
        return index + len(stored)
    bits = enc.params["bits"]
    distinct = len(set(stored))
    assert distinct <= 2**bits
    return index + ceil8(len(stored) * bits) + 2**bits


@st.composite
def sparse_matrices(draw: st.DrawFn) -> np.ndarray:
    out = draw(st.integers(1, 12))
    inp = draw(st.sampled_from([1, 2, 7, 8, 9, 33, 255, 256, 257, 300]))
    density = draw(st.sampled_from([0.0, 0.01, 0.05, 0.3, 0.9, 1.0]))
    distinct = draw(st.sampled_from([1, 2, 3, 15, 16, 17, 255]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    palette = rng.choice(np.array([v for v in range(-128, 128) if v != 0]), distinct, replace=False)
    values = rng.choice(palette, size=(out, inp))
    keep = rng.random((out, inp)) < density
    return np.where(keep, values, 0).astype(np.int8)


def check_round_trip(w: np.ndarray, enc: EncodedWeights) -> None:
    decoded = enc.decode()
    assert decoded.dtype == np.int8
    np.testing.assert_array_equal(decoded, w)
    assert enc.shape == w.shape
    assert enc.nbytes == sum(a.nbytes for a in enc.arrays)
    assert enc.nbytes == expected_bytes(w, enc)
    assert enc.params["nnz"] == np.count_nonzero(w)


@settings(max_examples=120, deadline=None)
@given(w=sparse_matrices(), fmt=st.sampled_from(FORMATS), k=st.integers(1, 8))
@example(w=np.zeros((3, 40), np.int8), fmt="relative", k=1)  # all zeros: no entries at all
@example(w=np.full((2, 9), -128, np.int8), fmt="relative_cb", k=3)  # all dense, int8 minimum
@example(w=np.eye(1, 700, 699, dtype=np.int8) * 5, fmt="relative", k=2)  # one row, gap 699
@example(w=np.eye(4, 300, 3, dtype=np.int8) * 7, fmt="csr", k=1)  # uint16 columns
def test_round_trip_and_byte_formula(w: np.ndarray, fmt: str, k: int) -> None:
    params = {"k": k} if fmt.startswith("relative") else {}
    if fmt == "huffman":
        params = {"span": min(127, 2**k - 1) if k > 1 else 2}
    enc = encode(w, fmt, **params)
    check_round_trip(w, enc)
    if fmt.startswith("relative"):
        gaps, values = reference_relative(w.ravel(), k)
        assert enc.params["entries"] == len(gaps)
        np.testing.assert_array_equal(unpack_bits(enc.array("gaps").values, k, len(gaps)), gaps)
        np.testing.assert_array_equal(enc.stored_values(), values)
        assert max(gaps, default=0) <= 2**k - 1
    if fmt.endswith("_cb"):
        stored = enc.stored_values()
        minimal = max(1, (len(set(stored.tolist())) - 1).bit_length())
        assert enc.params["bits"] == minimal
        # zero takes a code only in formats that store zeros
        if fmt in ("bitmask_cb", "csr_cb"):
            assert 0 not in set(stored.tolist())


@settings(max_examples=40, deadline=None)
@given(w=sparse_matrices(), fmt=st.sampled_from(FORMATS), extra=st.integers(0, 3))
def test_explicit_codebook_bits_and_auto_k(w: np.ndarray, fmt: str, extra: int) -> None:
    """Any bits at least the minimum work; k=None picks the smallest relative encoding."""
    if fmt.endswith("_cb"):
        minimal = encode(w, fmt).params["bits"]
        bits = min(8, minimal + extra)
        enc = encode(w, fmt, bits=bits)
        assert enc.params["bits"] == bits
        assert enc.array("codebook").values.size == 2**bits
        check_round_trip(w, enc)
    if fmt.startswith("relative"):
        auto = encode(w, fmt)
        assert auto.nbytes == min(encode(w, fmt, k=k).nbytes for k in range(1, 9))
        check_round_trip(w, auto)


# 2x5 golden: non-zeros at flat positions 1 (value 3) and 9 (value -2)
GOLDEN = np.array([[0, 3, 0, 0, 0], [0, 0, 0, 0, -2]], dtype=np.int8)


def test_golden_relative_k2_with_filler() -> None:
    enc = encode(GOLDEN, "relative", k=2)
    # gaps: 1, then 7 zeros > 3 -> filler (gap 3, value 0, at position 5), then gap 3
    assert enc.params["entries"] == 3
    assert enc.array("count").values.tolist() == [3]
    assert enc.array("count").ctype == "uint16_t"
    assert enc.array("gaps").values.tolist() == [1 | 3 << 2 | 3 << 4]  # 0x3D
    assert enc.array("values").values.tolist() == [3, 0, -2]
    assert enc.nbytes == 2 + 1 + 3
    np.testing.assert_array_equal(enc.decode(), GOLDEN)


def test_golden_relative_k3_fields_straddle_no_filler() -> None:
    enc = encode(GOLDEN, "relative", k=3)
    assert enc.array("gaps").values.tolist() == [1 | 7 << 3]
    assert enc.array("values").values.tolist() == [3, -2]
    assert enc.nbytes == 5


def test_golden_relative_codebook_includes_zero_for_fillers() -> None:
    enc = encode(GOLDEN, "relative_cb", k=2)
    # stored values 3, 0 (filler), -2 -> codebook [-2, 0, 3, pad 0] with 2-bit codes 2, 1, 0
    assert enc.params["bits"] == 2
    assert enc.array("codebook").values.tolist() == [-2, 0, 3, 0]
    assert enc.array("codes").values.tolist() == [2 | 1 << 2 | 0 << 4]
    assert enc.nbytes == 2 + 1 + 1 + 4


def test_golden_huffman_span4() -> None:
    enc = encode(GOLDEN, "huffman", span=4)
    # gap symbols 1, escape 4, 3: lengths 2, 1, 2 -> canonical codes 4:"0", 1:"10", 3:"11";
    # values -2, 3: codes "0", "1". Stream 10 1 | 0 | 11 0 -> bits 1010110, LSB-first 53.
    assert enc.params["entries"] == 3
    assert enc.array("gap_counts").values.tolist() == [1, 2]
    assert enc.array("gap_symbols").values.tolist() == [4, 1, 3]
    assert enc.array("value_counts").values.tolist() == [2]
    assert enc.array("value_symbols").values.tolist() == [-2, 3]
    assert enc.array("stream").values.tolist() == [53]
    assert enc.nbytes == 2 + 1 + 2 + 3 + 1 + 2
    np.testing.assert_array_equal(enc.decode(), GOLDEN)


def test_huffman_beats_relative_codes_on_skewed_values() -> None:
    """Entropy coding pays when values are skewed: 90% of non-zeros share one value."""
    rng = np.random.default_rng(3)
    values = np.where(rng.random((50, 300)) < 0.9, 2, rng.choice([-3, -1, 1, 3, 4, 5], (50, 300)))
    w = np.where(rng.random((50, 300)) < 0.1, values, 0).astype(np.int8)
    huff, fixed = encode(w, "huffman"), best_encoding(w, [f for f in FORMATS if f != "huffman"])
    assert huff.nbytes < 0.85 * fixed.nbytes
    assert best_encoding(w).format == "huffman"
    np.testing.assert_array_equal(huff.decode(), w)


def test_golden_bitmask_csr_dense() -> None:
    bitmask = encode(GOLDEN, "bitmask")
    assert bitmask.array("mask").values.tolist() == [0b10, 0b10]  # LSB-first bits 1 and 9
    assert bitmask.array("values").values.tolist() == [3, -2]
    assert bitmask.nbytes == 4
    csr = encode(GOLDEN, "csr")
    assert csr.array("row_ptr").values.tolist() == [0, 1, 2]
    assert csr.array("row_ptr").ctype == "uint16_t"
    assert csr.array("cols").values.tolist() == [1, 4]
    assert csr.array("cols").ctype == "uint8_t"
    assert csr.nbytes == 3 * 2 + 2 + 2
    assert encode(GOLDEN, "dense").nbytes == 10
    codebook = encode(GOLDEN, "bitmask_cb")
    assert codebook.array("codebook").values.tolist() == [-2, 3]  # no zero: not stored
    assert codebook.nbytes == 2 + 1 + 2
    assert best_encoding(GOLDEN).format == "bitmask"


def test_relative_k4_formula_on_a_larger_matrix() -> None:
    rng = np.random.default_rng(1)
    w = np.where(rng.random((50, 120)) < 0.1, rng.integers(1, 100, (50, 120)), 0).astype(np.int8)
    enc = encode(w, "relative", k=4)
    entries = len(reference_relative(w.ravel(), 4)[0])
    assert entries > np.count_nonzero(w)  # the density forces fillers
    assert enc.nbytes == entries + ceil8(entries * 4) + 2


def test_wide_types_for_large_counts() -> None:
    w = np.ones((300, 300), dtype=np.int8)  # 90000 non-zeros
    csr = encode(w, "csr")
    assert csr.array("row_ptr").ctype == "uint32_t"
    assert csr.array("cols").ctype == "uint16_t"
    assert csr.nbytes == 301 * 4 + 90000 * 2 + 90000
    rel = encode(w, "relative", k=1)
    assert rel.array("count").ctype == "uint32_t"
    assert rel.array("count").values.tolist() == [90000]
    np.testing.assert_array_equal(rel.decode(), w)


def test_pack_bits_lsb_first_stream() -> None:
    assert pack_bits(np.array([5, 3, 6]), 3).tolist() == [5 | 3 << 3 | (6 & 3) << 6, 6 >> 2]
    fields = np.arange(37) % 32
    np.testing.assert_array_equal(unpack_bits(pack_bits(fields, 5), 5, 37), fields)
    with pytest.raises(DeploymentError, match="does not fit in 2 bits"):
        pack_bits(np.array([4]), 2)


def test_best_encoding_choices() -> None:
    rng = np.random.default_rng(0)
    dense = rng.integers(-127, 128, (30, 40)).astype(np.int8)
    dense[dense == 0] = 1
    assert best_encoding(dense).format == "dense"

    values = rng.integers(-127, 128, (300, 784))
    values[values == 0] = 1
    sparse = np.where(rng.random((300, 784)) < 0.05, values, 0).astype(np.int8)
    best = best_encoding(sparse)
    assert best.format in ("bitmask", "csr", "relative", "huffman")
    assert best.nbytes < 0.1 * sparse.size
    assert best.nbytes == min(encode(sparse, f).nbytes for f in (*BASE_FORMATS, "huffman"))
    fixed = best_encoding(sparse, BASE_FORMATS)
    assert fixed.format in ("bitmask", "csr", "relative")

    palette = np.array([v for v in range(-8, 9) if v != 0])  # 16 shared non-zero values
    shared = np.where(sparse != 0, rng.choice(palette, sparse.shape), 0).astype(np.int8)
    best_shared = best_encoding(shared, [*BASE_FORMATS, *CODEBOOK_FORMATS])
    assert best_shared.format.endswith("_cb")
    assert best_shared.nbytes < encode(shared, "relative").nbytes
    # entropy-coded gaps beat fixed-width ones even with uniform values
    assert best_encoding(shared).format == "huffman"
    assert best_encoding(shared).nbytes < best_shared.nbytes
    np.testing.assert_array_equal(best_shared.decode(), shared)
    # restricted to plain formats, the choice follows
    assert not best_encoding(shared, ["bitmask", "csr", "relative"]).format.endswith("_cb")


def test_best_encoding_tie_prefers_simpler_format() -> None:
    w = np.array([[0, 1, 2, 3, 4, 5, 6, 7]], dtype=np.int8)  # dense 8 == bitmask 1 + 7
    assert encode(w, "dense").nbytes == encode(w, "bitmask").nbytes == 8
    assert best_encoding(w).format == "dense"
    assert best_encoding(w, ["bitmask", "dense"]).format == "dense"


def _layer(w: np.ndarray) -> QuantizedLinear:
    out = w.shape[0]
    return QuantizedLinear(
        weight=w,
        bias=np.zeros(out, np.int32),
        multiplier=np.full(out, 2**30, np.int32),
        shift=np.zeros(out, np.int32),
        output_zero_point=0,
        relu=False,
        weight_scale=np.ones(out, np.float32),
    )


def test_storage_report_counts_every_array() -> None:
    rng = np.random.default_rng(3)
    ws = [
        np.where(rng.random((20, 30)) < 0.1, 5, 0).astype(np.int8),
        rng.integers(1, 100, (4, 20)).astype(np.int8),
    ]
    model = QuantizedMLP([_layer(w) for w in ws], input_scale=0.1, input_zero_point=0)
    encodings = model_storage(model)
    report = storage_report(model, encodings)
    assert [lb.format for lb in report.layers] == [e.format for e in encodings]
    # zero biases, one multiplier and one shift for all rows: one element each
    for lb, enc in zip(report.layers, encodings, strict=True):
        assert (lb.weights, lb.bias, lb.multiplier, lb.shift) == (enc.nbytes, 1, 4, 1)
        assert lb.total == enc.nbytes + 6
    assert report.weights == sum(e.nbytes for e in encodings)
    assert report.total == report.weights + 12
    assert str(report.total) in report.table().splitlines()[-1]
    forced = storage_report(model, formats=["dense"])
    assert forced.weights == 20 * 30 + 4 * 20


@pytest.mark.parametrize(
    ("weight", "fmt", "params", "message"),
    [
        (np.zeros((2, 3), np.int8), "sparse", {}, "unknown weight format 'sparse'"),
        (np.zeros((2, 3), np.int8), "relative", {"k": 9}, "k must be in 1..8"),
        (np.zeros((2, 3), np.int8), "relative", {"k": 0}, "k must be in 1..8"),
        (np.zeros((2, 3), np.int8), "csr", {"k": 2}, "takes no parameter 'k'"),
        (np.zeros((2, 3), np.int8), "csr", {"bits": 2}, "takes no parameter 'bits'"),
        (np.arange(6, dtype=np.int8).reshape(2, 3), "dense_cb", {"bits": 2}, "do not fit a 2-bit"),
        (np.zeros((2, 3), np.int8), "csr_cb", {"bits": 9}, "bits must be in 1..8"),
        (np.zeros((2, 3, 4), np.int8), "dense", {}, "2-D matrix"),
        (np.zeros((0, 3), np.int8), "dense", {}, "non-empty"),
        (np.zeros((2, 3), np.float32), "dense", {}, "dtype float32"),
        (np.full((2, 3), 200), "dense", {}, "int8 range"),
    ],
)
def test_bad_input_is_a_deployment_error(
    weight: np.ndarray, fmt: str, params: dict[str, int], message: str
) -> None:
    with pytest.raises(DeploymentError, match=message):
        encode(weight, fmt, **params)


def test_best_encoding_rejects_unknown_or_empty_formats() -> None:
    w = np.ones((2, 2), np.int8)
    with pytest.raises(DeploymentError, match="unknown weight format 'zip'"):
        best_encoding(w, ["dense", "zip"])
    with pytest.raises(DeploymentError, match="at least one format"):
        best_encoding(w, [])


def test_c_array_refuses_values_that_would_wrap() -> None:
    assert CArray("shift", "int8_t", np.array([-31, 31])).nbytes == 2
    assert CArray("row_ptr", "uint32_t", np.array([0, 70000])).nbytes == 8
    with pytest.raises(DeploymentError, match="values of shift do not fit int8_t"):
        CArray("shift", "int8_t", np.array([200]))
    with pytest.raises(DeploymentError, match="unsupported C array type 'int64_t'"):
        CArray("x", "int64_t", np.array([1]))


def test_codebook_bits_with_auto_k_skips_widths_that_need_fillers() -> None:
    # two values, far apart: 1-bit codes fit only where no filler zero is needed (k = 8)
    w = np.zeros((1, 200), dtype=np.int8)
    w[0, 21], w[0, 150] = 89, 35
    enc = encode(w, "relative_cb", bits=1)
    assert enc.params["bits"] == 1 and enc.params["k"] == 8
    assert np.array_equal(enc.decode(), w)


@pytest.mark.parametrize(
    ("values", "ctype", "size"),
    [
        ([5, 5, 5], "int8_t", 1),
        ([-128, 127, 0], "int8_t", 3),
        ([-129, 0], "int16_t", 2),
        ([2**15 - 1, -(2**15)], "int16_t", 2),
        ([2**15, 7], "int32_t", 2),
        ([2**30, 2**30], "int32_t", 1),
        ([-(2**31), 2**31 - 1], "int32_t", 2),
    ],
)
def test_compact_array_picks_the_narrowest_exact_type(
    values: list[int], ctype: str, size: int
) -> None:
    array = compact_array("bias", np.array(values, dtype=np.int64))
    assert (array.ctype, array.values.size) == (ctype, size)
    assert array.nbytes == size * {"int8_t": 1, "int16_t": 2, "int32_t": 4}[ctype]
    expanded = np.broadcast_to(array.values.astype(np.int64), (len(values),))
    np.testing.assert_array_equal(expanded, values)


def test_compact_array_rejects_values_beyond_int32() -> None:
    with pytest.raises(DeploymentError, match="bias: values exceed the int32 range"):
        compact_array("bias", np.array([2**31]))


def test_row_arrays_of_a_per_channel_layer() -> None:
    layer = _layer(np.ones((3, 2), np.int8))
    layer.bias = np.array([1, -70_000, 3], np.int32)
    layer.multiplier = np.array([2**30, 2**30 + 1, 2**30], np.int32)
    bias, mult, shift = row_arrays(layer)
    assert [(a.name_suffix, a.ctype, a.values.size) for a in (bias, mult, shift)] == [
        ("bias", "int32_t", 3),
        ("mult", "int32_t", 3),
        ("shift", "int8_t", 1),
    ]
