"""Generated C code: bit-exact against integer_forward, and symbol sizes equal to the accounting."""

from __future__ import annotations

import shutil
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from prunekit.errors import DeploymentError
from prunekit.mcu.c_export import CSource, generate_c
from prunekit.mcu.compile import (
    check_against_reference,
    find_c_compiler,
    measure_object,
)
from prunekit.mcu.qmodel import (
    INT32_MAX,
    INT32_MIN,
    QuantizedLinear,
    QuantizedMLP,
    integer_forward,
    integer_predict,
)
from prunekit.mcu.storage import (
    CODEBOOK_FORMATS,
    FORMATS,
    EncodedWeights,
    best_encoding,
    encode,
    storage_report,
)

pytestmark = pytest.mark.skipif(
    find_c_compiler() is None, reason="no C compiler ($CC, cc, gcc or clang) on PATH"
)
needs_binutils = pytest.mark.skipif(
    shutil.which("nm") is None or shutil.which("size") is None,
    reason="binutils nm/size not installed",
)

# 15 shared non-zero values: with the zero of relative indexing's fillers, 4-bit codes
PALETTE = np.array([v for v in range(-56, 65, 8) if v != 0], dtype=np.int8)


def random_weight(
    rng: np.random.Generator, out: int, inp: int, sparsity: float, shared: bool
) -> np.ndarray:
    values = rng.choice(PALETTE, (out, inp)) if shared else rng.integers(-127, 128, (out, inp))
    return np.where(rng.random((out, inp)) >= sparsity, values, 0).astype(np.int8)


def random_model(
    rng: np.random.Generator,
    widths: list[int],
    sparsity: float | list[float],
    shared: bool = False,
    calibration: np.ndarray | None = None,
    per_layer_scale: bool = False,
    bias_limits: list[int] | None = None,
) -> QuantizedMLP:
    """A random integer MLP whose shifts are calibrated so that activations spread over the
    int8 range (random shifts in [-12, 0] would saturate nearly every output to -128/127 and
    test little), plus a couple of rows with positive shifts that do saturate.

    ``per_layer_scale``: one multiplier and shift per layer (as weight sharing produces);
    ``bias_limits``: per layer, biases are drawn from [-limit, limit) (default 3000)."""
    sparsities = sparsity if isinstance(sparsity, list) else [sparsity] * (len(widths) - 1)
    x = calibration if calibration is not None else rng.integers(-128, 128, (64, widths[0]))
    layers: list[QuantizedLinear] = []
    input_zero_point = int(rng.integers(-20, 20))
    for i, (inp, out) in enumerate(pairwise(widths)):
        w = random_weight(rng, out, inp, sparsities[i], shared)
        limit = bias_limits[i] if bias_limits is not None else 3000
        bias = rng.integers(-limit, limit, out).astype(np.int32)
        acc = x.astype(np.int64) @ w.astype(np.int64).T + bias
        spread = np.maximum(acc.std(axis=0), 1.0)
        shift = np.clip(np.round(np.log2(40.0 / spread)), -12, 0) + rng.integers(-1, 2, out)
        shift = np.clip(shift, -12, 0).astype(np.int32)
        shift[rng.integers(0, out, 2)] = rng.integers(1, 3, 2)
        multiplier = rng.integers(2**30, 2**31, out).astype(np.int32)
        if per_layer_scale:
            shift[:] = int(np.median(shift))
            multiplier[:] = multiplier[0]
        layer = QuantizedLinear(
            weight=w,
            bias=bias,
            multiplier=multiplier,
            shift=shift,
            output_zero_point=int(rng.integers(-128, 0)) if i < len(widths) - 2 else 0,
            relu=i < len(widths) - 2,
            weight_scale=np.ones(out, np.float32),
        )
        layers.append(layer)
        x = integer_forward(QuantizedMLP([layer], 1.0, 0), x)
    return QuantizedMLP(layers, input_scale=0.0123, input_zero_point=input_zero_point)


def samples(rng: np.random.Generator, width: int, n: int = 300) -> np.ndarray:
    x = rng.integers(-128, 128, (n, width)).astype(np.int8)
    x[0] = -128
    x[1] = 127
    x[2] = 0
    x[3, ::2] = -128
    x[3, 1::2] = 127
    return x


def assert_exact(model: QuantizedMLP, source: CSource, x: np.ndarray, workdir: Path) -> None:
    check = check_against_reference(model, source, x, workdir)
    assert check.n == len(x)
    assert check.mismatches == 0
    assert check.logits_identical
    assert check.agreement == 1.0
    logits = integer_forward(model, x)
    assert len(np.unique(logits)) > 20, "degenerate model: the comparison would prove little"


SMALL_WIDTHS = [300, 40, 24, 6]  # in > 256: uint16 columns in the first layer


@pytest.fixture(scope="module")
def small_model() -> QuantizedMLP:
    rng = np.random.default_rng(10)
    return random_model(rng, SMALL_WIDTHS, [0.95, 0.5, 0.0])


@pytest.fixture(scope="module")
def shared_model() -> QuantizedMLP:
    rng = np.random.default_rng(11)
    return random_model(rng, SMALL_WIDTHS, [0.95, 0.5, 0.0], shared=True)


@pytest.fixture(scope="module")
def lenet() -> QuantizedMLP:
    rng = np.random.default_rng(12)
    return random_model(rng, [784, 300, 100, 10], 0.95, shared=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_is_bit_exact(
    fmt: str, small_model: QuantizedMLP, shared_model: QuantizedMLP, tmp_path: Path
) -> None:
    model = shared_model if fmt.endswith("_cb") else small_model
    encodings = [encode(layer.weight, fmt) for layer in model.layers]
    source = generate_c(model, encodings)
    assert source.source.count(f", {fmt} {{'nnz'") == 3  # one kernel per layer in that format
    assert_exact(model, source, samples(np.random.default_rng(1), SMALL_WIDTHS[0]), tmp_path)


@pytest.mark.parametrize("span", [2, 127])
def test_huffman_escapes_and_shared_values_are_bit_exact(
    span: int, small_model: QuantizedMLP, shared_model: QuantizedMLP, tmp_path: Path
) -> None:
    for model in (small_model, shared_model):
        encodings = [encode(layer.weight, "huffman", span=span) for layer in model.layers]
        if span == 2:
            assert encodings[0].params["entries"] > encodings[0].params["nnz"]  # escapes used
        source = generate_c(model, encodings)
        assert_exact(model, source, samples(np.random.default_rng(5), 300, 100), tmp_path)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_relative_gap_widths_are_bit_exact(
    k: int, small_model: QuantizedMLP, tmp_path: Path
) -> None:
    encodings = [encode(layer.weight, "relative", k=k) for layer in small_model.layers]
    if k <= 3:
        assert encodings[0].params["entries"] > encodings[0].params["nnz"]  # fillers exercised
    source = generate_c(small_model, encodings)
    assert_exact(small_model, source, samples(np.random.default_rng(2), 300, 100), tmp_path)


def test_lenet_best_encoding_is_bit_exact_and_small(lenet: QuantizedMLP, tmp_path: Path) -> None:
    source = generate_c(lenet)
    first = source.encodings[0]
    # Huffman-coded gaps and values beat the best fixed-width format (4-bit relative codes)
    assert first.format == "huffman"
    fixed = best_encoding(lenet.layers[0].weight, CODEBOOK_FORMATS)
    assert (fixed.format, fixed.params["bits"]) == ("relative_cb", 4)
    assert first.nbytes < 0.95 * fixed.nbytes
    report = storage_report(lenet, source.encodings)
    # biases in [-3000, 3000) are int16; multipliers int32 and shifts int8 per row
    assert source.data_bytes == report.total == report.weights + 7 * (300 + 100 + 10)
    # 95 % sparse with 15 shared values: about k + 4 bits per non-zero, fillers included
    nnz = sum(int(np.count_nonzero(layer.weight)) for layer in lenet.layers)
    assert report.weights < 1.35 * nnz
    assert report.total < 21_500
    assert source.arena_bytes == 300 + 100
    assert_exact(lenet, source, samples(np.random.default_rng(3), 784), tmp_path)


def test_lenet_dense_is_bit_exact(lenet: QuantizedMLP, tmp_path: Path) -> None:
    source = generate_c(lenet, [encode(layer.weight, "dense") for layer in lenet.layers])
    assert_exact(lenet, source, samples(np.random.default_rng(4), 784, 50), tmp_path)


def test_extreme_requantisation_paths(tmp_path: Path) -> None:
    """Saturating bias adds, left shifts that saturate, the INT32_MIN*INT32_MIN overflow case,
    shift -31, an all-zero layer (no stored weight) and ties in predict."""
    rng = np.random.default_rng(5)
    w0 = rng.integers(-127, 128, (8, 12)).astype(np.int8)
    w0[7] = 0
    layer0 = QuantizedLinear(
        weight=w0,
        bias=np.array([INT32_MAX, INT32_MIN, INT32_MAX - 5, INT32_MIN, 0, 9, -9, 100], np.int32),
        multiplier=np.array(
            [2**30, 2**31 - 1, 2**30, INT32_MIN, 2**30, 2**31 - 1, 1, 2**30], np.int32
        ),
        shift=np.array([0, 0, -1, 1, -31, 31, 0, -3], np.int32),
        output_zero_point=-5,
        relu=True,
        weight_scale=np.ones(8, np.float32),
    )
    tie = QuantizedLinear(
        weight=np.zeros((5, 8), np.int8),  # every logit equal: predict must answer 0
        bias=np.full(5, 1234, np.int32),
        multiplier=np.full(5, 2**30, np.int32),
        shift=np.full(5, -4, np.int32),
        output_zero_point=3,
        relu=False,
        weight_scale=np.ones(5, np.float32),
    )
    x = samples(rng, 12, 50)
    for fmt in ("relative", "csr_cb"):
        model = QuantizedMLP([layer0, tie], input_scale=1.0, input_zero_point=0)
        source = generate_c(model, [encode(la.weight, fmt) for la in model.layers])
        check = check_against_reference(model, source, x, tmp_path / fmt)
        assert check.logits_identical and check.agreement == 1.0
        assert (integer_predict(model, x) == 0).all()
    # the first layer alone, so its saturated outputs are the logits themselves
    single = QuantizedMLP([layer0], input_scale=1.0, input_zero_point=0)
    source = generate_c(single, [encode(layer0.weight, "bitmask")])
    assert source.arena_bytes == 0 and "_arena" not in source.source
    logits = integer_forward(single, x)
    assert (logits[:, 0] == 127).all() and (logits[:, 3] == 127).all()
    check = check_against_reference(single, source, x, tmp_path / "single")
    assert check.logits_identical and check.agreement == 1.0


def test_rounding_of_negative_values_and_ties(tmp_path: Path) -> None:
    """Small accumulators and small right shifts, no ReLU: the output depends on every rounding
    detail (the nudge of negative products, ties of RoundingDivideByPOT away from zero), which
    the calibrated models above mostly hide behind ReLU and large shifts."""
    rng = np.random.default_rng(7)
    out = 24
    layer = QuantizedLinear(
        weight=rng.integers(-3, 4, (out, 12)).astype(np.int8),
        bias=rng.integers(-200, 200, out).astype(np.int32),
        multiplier=rng.integers(2**30, 2**31, out).astype(np.int32),
        shift=np.tile(np.arange(-7, -1, dtype=np.int32), out // 6),
        output_zero_point=4,
        relu=False,
        weight_scale=np.ones(out, np.float32),
    )
    model = QuantizedMLP([layer], input_scale=1.0, input_zero_point=0)
    x = samples(rng, 12, 1000)
    logits = integer_forward(model, x)
    assert (logits < 4).mean() > 0.3 and (np.abs(logits.astype(int)) < 127).mean() > 0.8
    source = generate_c(model, [encode(layer.weight, "dense_cb")])
    check = check_against_reference(model, source, x, tmp_path)
    assert check.logits_identical and check.agreement == 1.0


@needs_binutils
@pytest.mark.parametrize("fmt", ["best", "relative", "csr", "bitmask_cb", "dense_cb"])
def test_symbol_sizes_equal_the_accounting(
    fmt: str, shared_model: QuantizedMLP, tmp_path: Path
) -> None:
    model = shared_model
    encodings: list[EncodedWeights] | None = (
        None if fmt == "best" else [encode(layer.weight, fmt) for layer in model.layers]
    )
    source = generate_c(model, encodings, prefix="tiny_net")
    sizes = measure_object(source, tmp_path)
    for i, enc in enumerate(source.encodings):
        for array in enc.arrays:
            name = f"tiny_net_l{i}_{array.name_suffix}"
            assert sizes.symbols.get(name, 0) == array.nbytes, name
        out = model.layers[i].out_features
        assert sizes.symbols[f"tiny_net_l{i}_bias"] == 2 * out  # int16 biases
        assert sizes.symbols[f"tiny_net_l{i}_mult"] == 4 * out
        assert sizes.symbols[f"tiny_net_l{i}_shift"] == out
    measured = sum(sizes.symbols[name] for name in source.symbols)
    assert measured == source.data_bytes == storage_report(model, source.encodings).total
    assert sizes.symbols["tiny_net_arena"] == source.arena_bytes == 40 + 24
    assert sizes.bss >= source.arena_bytes and sizes.data == 0
    # the arrays are all of .rodata, up to alignment padding
    assert source.data_bytes <= sizes.rodata <= source.data_bytes + 32 * len(source.symbols)
    assert sizes.flash == sizes.text + sizes.rodata + sizes.data
    assert sizes.ram == sizes.data + sizes.bss


def test_header_api_and_no_heap(lenet: QuantizedMLP) -> None:
    source = generate_c(lenet, prefix="lenet")
    header, body = source.header, source.source
    assert "#define LENET_INPUT_SIZE 784" in header
    assert "#define LENET_OUTPUT_SIZE 10" in header
    assert f"#define LENET_INPUT_ZERO_POINT ({lenet.input_zero_point})" in header
    assert "0.0123f" in header
    assert "void lenet_forward(const int8_t *input, int8_t *logits);" in header
    assert "int lenet_predict(const int8_t *input);" in header
    assert "static int8_t lenet_arena[400];" in body
    for banned in ("malloc", "float", "double", "stdlib"):
        assert banned not in body
    assert set(source.symbols) == {
        f"lenet_l{i}_{a.name_suffix}" for i, e in enumerate(source.encodings) for a in e.arrays
    } | {f"lenet_l{i}_{s}" for i in range(3) for s in ("bias", "mult", "shift")}


def test_compile_errors_are_deployment_errors(small_model: QuantizedMLP, tmp_path: Path) -> None:
    source = generate_c(small_model)
    x = samples(np.random.default_rng(6), 300, 4)
    broken = replace(source, source=source.source + "\nint broken = ;\n")
    with pytest.raises(DeploymentError, match=r"compiling .* failed .*error"):
        check_against_reference(small_model, broken, x, tmp_path / "syntax")
    # a mere warning is an error too: the generated code has to be -Wall -Wextra -pedantic clean
    warned = replace(
        source, source=source.source + "\nstatic int unused_helper(void) { return 0; }\n"
    )
    with pytest.raises(DeploymentError, match="unused_helper"):
        check_against_reference(small_model, warned, x, tmp_path / "warning")
    # and -pedantic is on: a zero-length array is a GNU extension
    gnu = replace(source, source=source.source + "\nconst int8_t gnu_only[0];\n")
    with pytest.raises(DeploymentError, match="compiling"):
        measure_object(gnu, tmp_path / "pedantic")


def test_missing_compiler_and_bad_samples(
    small_model: QuantizedMLP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = generate_c(small_model)
    with pytest.raises(DeploymentError, match=r"samples must have shape \[n >= 1, 300\]"):
        check_against_reference(small_model, source, np.zeros((3, 299), np.int8), tmp_path)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_c_compiler() is None
    with pytest.raises(DeploymentError, match="no C compiler found"):
        check_against_reference(small_model, source, np.zeros((3, 300), np.int8), tmp_path)


def test_cc_environment_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    gcc = shutil.which("gcc") or shutil.which("clang")
    if gcc is None:
        pytest.skip("neither gcc nor clang to point $CC at")
    monkeypatch.setenv("CC", Path(gcc).name)
    assert find_c_compiler() == gcc


def test_generate_c_rejects_bad_models(small_model: QuantizedMLP) -> None:
    wrong = [encode(np.zeros_like(layer.weight), "csr") for layer in small_model.layers]
    with pytest.raises(DeploymentError, match="layer 0: the csr encoding does not decode"):
        generate_c(small_model, wrong)
    with pytest.raises(DeploymentError, match="2 encodings for a model of 3 layers"):
        generate_c(small_model, wrong[:2])
    with pytest.raises(DeploymentError, match="not a C identifier"):
        generate_c(small_model, prefix="my-model")
    bad_shift = replace(small_model.layers[0], shift=np.full(40, -32, np.int32))
    with pytest.raises(DeploymentError, match=r"layer 0: shifts must lie in \[-31, 31\]"):
        generate_c(QuantizedMLP([bad_shift, *small_model.layers[1:]], 0.1, 0))
    mismatch = QuantizedMLP([small_model.layers[0], small_model.layers[2]], 0.1, 0)
    with pytest.raises(
        DeploymentError, match="layer 1 takes 24 inputs but the previous layer gives 40"
    ):
        generate_c(mismatch)


@needs_binutils
def test_compact_row_arrays_are_exact_and_accounted(tmp_path: Path) -> None:
    """One multiplier and shift per layer, biases narrowed to int8 / int16 / int32 per layer:
    the C code reads the single elements for every row and nm sees exactly those bytes."""
    rng = np.random.default_rng(21)
    model = random_model(rng, SMALL_WIDTHS, [0.9, 0.5, 0.0], shared=True, per_layer_scale=True,
                         bias_limits=[100, 3000, 3000])  # fmt: skip
    model.layers[2].bias[0] = 70_000  # one large bias makes the whole array int32
    source = generate_c(model, prefix="tiny_net")
    assert "tiny_net_l0_mult[0]" in source.source and "tiny_net_l0_mult[o]" not in source.source
    sizes = measure_object(source, tmp_path)
    widths = SMALL_WIDTHS[1:]
    for i, (out, bias_bytes) in enumerate(zip(widths, [1, 2, 4], strict=True)):
        assert sizes.symbols[f"tiny_net_l{i}_bias"] == bias_bytes * out
        assert sizes.symbols[f"tiny_net_l{i}_mult"] == 4
        assert sizes.symbols[f"tiny_net_l{i}_shift"] == 1
    report = storage_report(model, source.encodings)
    assert report.total == report.weights + sum(
        w * b + 5 for w, b in zip(widths, [1, 2, 4], strict=True)
    )
    assert sum(sizes.symbols[name] for name in source.symbols) == report.total
    assert_exact(model, source, samples(np.random.default_rng(22), SMALL_WIDTHS[0]), tmp_path)
