"""Prove generated C code by compiling it: object sizes and bit-exact agreement with Python.

Two checks need a host C compiler (and binutils for the sizes):

- ``measure_object`` compiles the model alone with ``-Os -c`` and reads the section sizes
  (``size -A``) and the symbol sizes (``nm -S``), so the byte accounting of
  ``prunekit.mcu.storage`` can be compared with what the compiler really emitted;
- ``check_against_reference`` compiles the model with a small harness, runs it on int8 samples
  and compares its logits and predictions with ``qmodel.integer_forward``/``integer_predict``.

Host sizes are a proxy for a microcontroller's: the constant arrays have the same sizes on any
target, code size does not.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunekit.errors import DeploymentError
from prunekit.mcu.c_export import CSource
from prunekit.mcu.qmodel import QuantizedMLP, integer_forward, integer_predict

# Flags the generated code must compile cleanly with; any warning is an error.
STRICT_FLAGS: tuple[str, ...] = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic")
_RUN_TIMEOUT_S = 300
_ERROR_LINES = 3


def find_c_compiler() -> str | None:
    """The C compiler to use: ``$CC`` if it resolves, else ``cc``, ``gcc``, ``clang`` on PATH.

    ``$CC`` may carry a launcher or flags (``"ccache gcc"``); the returned string is then the
    whole command with its program resolved, to be split with ``shlex``.
    """
    env = os.environ.get("CC", "").strip()
    if env:
        parts = shlex.split(env)
        resolved = shutil.which(parts[0])
        if resolved:
            return shlex.join([resolved, *parts[1:]])
    for name in ("cc", "gcc", "clang"):
        resolved = shutil.which(name)
        if resolved:
            return resolved
    return None


def _require_compiler(compiler: str | None) -> str:
    found = compiler if compiler is not None else find_c_compiler()
    if found is None:
        raise DeploymentError("no C compiler found: set $CC or install cc, gcc or clang")
    return found


def _first_errors(text: str) -> str:
    """The first few compiler diagnostics, joined into one line for the error message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()] or lines
    return " | ".join(errors[:_ERROR_LINES]) or "no diagnostic printed"


def _compile(compiler: str, args: Sequence[str], cwd: Path, what: str) -> None:
    command = [*shlex.split(compiler), *args]
    try:
        proc = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=_RUN_TIMEOUT_S, check=False
        )
    except OSError as exc:
        raise DeploymentError(f"could not run the C compiler {compiler!r}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise DeploymentError(f"compiling {what} took over {_RUN_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        raise DeploymentError(
            f"compiling {what} failed ({proc.returncode}): {_first_errors(proc.stderr + proc.stdout)}"
        )


def write_sources(source: CSource, workdir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``<prefix>.h`` and ``<prefix>.c`` into ``workdir``; returns their paths."""
    directory = Path(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    header = directory / source.header_name
    body = directory / source.source_name
    header.write_text(source.header)
    body.write_text(source.source)
    return header, body


@dataclass
class ObjectSizes:
    """Section and symbol sizes (bytes) of the compiled model object."""

    text: int  # code (.text*)
    rodata: int  # constant data (.rodata*): the weight arrays live here
    data: int  # initialised variables (.data*): copied from flash to RAM at boot
    bss: int  # zero-initialised variables (.bss*): the arena
    symbols: dict[str, int] = field(default_factory=dict)  # every sized symbol -> bytes

    @property
    def flash(self) -> int:
        return self.text + self.rodata + self.data

    @property
    def ram(self) -> int:
        return self.data + self.bss


def _tool(name: str) -> str:
    """A binutils program, overridable as ``$NM``/``$SIZE`` (e.g. a cross toolchain's)."""
    wanted = os.environ.get(name.upper(), name)
    resolved = shutil.which(wanted)
    if resolved is None:
        raise DeploymentError(f"binutils program {wanted!r} not found: install binutils")
    return resolved


def _run_tool(command: list[str]) -> str:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise DeploymentError(f"{Path(command[0]).name} failed: {_first_errors(proc.stderr)}")
    return proc.stdout


def _parse_size_a(text: str) -> tuple[int, int, int, int]:
    """Sum ``size -A`` sections into text, rodata, data, bss (other sections are not loaded)."""
    totals = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    prefixes = {
        ".text": "text",
        ".rodata": "rodata",
        ".srodata": "rodata",
        ".data": "data",
        ".sdata": "data",
        ".bss": "bss",
        ".sbss": "bss",
    }
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[0].startswith(".") or not parts[1].isdigit():
            continue
        for prefix, kind in prefixes.items():
            if parts[0] == prefix or parts[0].startswith(prefix + "."):
                totals[kind] += int(parts[1])
                break
    return totals["text"], totals["rodata"], totals["data"], totals["bss"]


def _parse_nm(text: str) -> dict[str, int]:
    """``nm -S`` lines ``address size type name`` -> {name: size}; unsized symbols skipped."""
    symbols: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4:
            symbols[parts[3]] = int(parts[1], 16)
    return symbols


def measure_object(
    source: CSource, workdir: str | os.PathLike[str], compiler: str | None = None
) -> ObjectSizes:
    """Compile the model alone (``-Os -c``, strict flags) for the host and measure it."""
    cc = _require_compiler(compiler)
    size_tool, nm_tool = _tool("size"), _tool("nm")
    _, body = write_sources(source, workdir)
    obj = body.with_suffix(".o")
    _compile(cc, [*STRICT_FLAGS, "-Os", "-c", body.name, "-o", obj.name], body.parent, body.name)
    text, rodata, data, bss = _parse_size_a(_run_tool([size_tool, "-A", str(obj)]))
    symbols = _parse_nm(_run_tool([nm_tool, "-S", "--size-sort", str(obj)]))
    return ObjectSizes(text, rodata, data, bss, symbols)


_HARNESS = """\
/* Host test harness: int8 samples from argv[1] -> int8 logits to argv[2] and int32
 * predictions (native byte order) to argv[3]. */
#include <stdio.h>
#include <stdint.h>
#include "{header}"

int main(int argc, char **argv)
{{
    int8_t input[{upper}_INPUT_SIZE];
    int8_t logits[{upper}_OUTPUT_SIZE];
    FILE *in;
    FILE *out_logits;
    FILE *out_pred;
    if (argc != 4) {{
        fprintf(stderr, "usage: %s input.bin logits.bin predict.bin\\n", argv[0]);
        return 2;
    }}
    in = fopen(argv[1], "rb");
    out_logits = fopen(argv[2], "wb");
    out_pred = fopen(argv[3], "wb");
    if (in == NULL || out_logits == NULL || out_pred == NULL) {{
        fprintf(stderr, "cannot open the sample or output files\\n");
        return 3;
    }}
    while (fread(input, 1, sizeof input, in) == sizeof input) {{
        int32_t pred;
        {prefix}_forward(input, logits);
        pred = (int32_t){prefix}_predict(input);
        if (fwrite(logits, 1, sizeof logits, out_logits) != sizeof logits ||
            fwrite(&pred, sizeof pred, 1, out_pred) != 1) {{
            fprintf(stderr, "write failed\\n");
            return 4;
        }}
    }}
    fclose(in);
    if (fclose(out_logits) != 0 || fclose(out_pred) != 0) {{
        return 4;
    }}
    return 0;
}}
"""


def write_harness(source: CSource, workdir: str | os.PathLike[str]) -> Path:
    """Write the model's header and source plus ``harness.c`` into ``workdir``."""
    header, _ = write_sources(source, workdir)
    harness = header.parent / "harness.c"
    harness.write_text(
        _HARNESS.format(
            header=source.header_name, upper=source.prefix.upper(), prefix=source.prefix
        )
    )
    return harness


@dataclass
class CCheck:
    """The compiled C model against ``integer_forward`` on the same int8 samples."""

    compiler: str  # the compiler command used
    n: int  # samples compared
    agreement: float  # fraction of samples where C predict == integer_predict
    logits_identical: bool  # every logit of every sample equal
    mismatches: int  # samples with at least one differing logit


def _check_samples(qmodel: QuantizedMLP, x_int8: np.ndarray) -> np.ndarray:
    x = np.asarray(x_int8)
    width = qmodel.layers[0].in_features
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != width:
        raise DeploymentError(f"samples must have shape [n >= 1, {width}], got {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
        raise DeploymentError(f"samples must be int8 integers, got dtype {x.dtype}")
    if int(x.min()) < -128 or int(x.max()) > 127:
        raise DeploymentError("sample values must lie in the int8 range [-128, 127]")
    return np.ascontiguousarray(x, dtype=np.int8)


def check_against_reference(
    qmodel: QuantizedMLP,
    source: CSource,
    x_int8: np.ndarray,
    workdir: str | os.PathLike[str],
    compiler: str | None = None,
) -> CCheck:
    """Compile ``source`` with a harness (``-O2``, strict flags), run it on ``x_int8``
    (``[n, in]``) and compare with ``integer_forward``/``integer_predict``."""
    cc = _require_compiler(compiler)
    x = _check_samples(qmodel, x_int8)
    harness = write_harness(source, workdir)
    directory = harness.parent
    exe = directory / "harness"
    _compile(
        cc,
        [*STRICT_FLAGS, "-O2", harness.name, source.source_name, "-o", exe.name],
        directory,
        f"{harness.name} and {source.source_name}",
    )
    samples, logits_file, pred_file = (
        directory / "samples.bin",
        directory / "logits.bin",
        directory / "predict.bin",
    )
    x.tofile(samples)
    try:
        proc = subprocess.run(
            [str(exe), str(samples), str(logits_file), str(pred_file)],
            capture_output=True,
            text=True,
            timeout=_RUN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DeploymentError(f"the C harness ran over {_RUN_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        raise DeploymentError(
            f"the C harness failed ({proc.returncode}): {_first_errors(proc.stderr)}"
        )
    n = x.shape[0]
    width = qmodel.layers[-1].out_features
    c_logits = np.fromfile(logits_file, dtype=np.int8)
    c_pred = np.fromfile(pred_file, dtype=np.int32)
    if c_logits.size != n * width or c_pred.size != n:
        raise DeploymentError(
            f"the C harness wrote {c_pred.size} of {n} samples; its output is incomplete"
        )
    ref_logits = integer_forward(qmodel, x)
    ref_pred = integer_predict(qmodel, x)
    differing = np.any(c_logits.reshape(n, width) != ref_logits, axis=1)
    mismatches = int(differing.sum())
    return CCheck(
        compiler=cc,
        n=n,
        agreement=float(np.mean(c_pred == ref_pred)),
        logits_identical=mismatches == 0,
        mismatches=mismatches,
    )
