"""Write a compressed MLP as a deployable directory: C files, a report, and the check that the
compiled C computes what the Python integer reference computes.

Everything is written into a staging directory beside the output and moved into place at the
end (``prunekit._outputs``), so a failure (or Ctrl-C) never leaves a half-written output, and an
existing directory is only replaced when the caller asked for it (``force``) and it holds a
previous output of the same command and nothing else.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from prunekit._outputs import OutputDir, check_output_dir
from prunekit._version import __version__
from prunekit.mcu.c_export import CSource, generate_c
from prunekit.mcu.compile import check_against_reference, find_c_compiler, measure_object
from prunekit.mcu.compress import Candidate, Compression, integer_accuracy
from prunekit.mcu.datasets import Splits

PREFIX = "prunekit_model"
WEIGHTS_FILE = "weights.safetensors"


@dataclass
class DenseFacts:
    arch: list[int]
    accuracy: float  # float32 model on the test split
    bytes: int  # fp32 parameters
    params: int


def dense_facts(model: nn.Module, arch: list[int], accuracy: float) -> DenseFacts:
    params = sum(p.numel() for p in model.parameters())
    return DenseFacts(arch, accuracy, params * 4, params)


def _c_section(cand: Candidate, source: CSource, data: Splits, workdir: Path) -> dict[str, Any]:
    compiler = find_c_compiler()
    if compiler is None:
        reason = "no C compiler found (set CC or install gcc/clang); the C files were still written"
        return {"c_check": {"agreement": None, "reason": reason}, "flash": None}
    x = cand.qmodel.quantize_input(data.test_x.numpy())
    check = check_against_reference(cand.qmodel, source, x, workdir / "check", compiler)
    sizes = measure_object(source, workdir / "object", compiler)
    return {
        "c_check": {
            "agreement": check.agreement,
            "logits_identical": check.logits_identical,
            "mismatches": check.mismatches,
            "samples": check.n,
            "compiler": check.compiler,
            "reason": None,
        },
        "flash": {
            "total": sizes.flash,
            "code": sizes.text,
            "const_data": sizes.rodata + sizes.data,
            "ram": sizes.ram,
            "arena": source.arena_bytes,
            "measured_from": f"{Path(compiler).name} -Os -c for the host",
        },
    }


def _write_weights(path: Path, cand: Candidate, data: Splits) -> None:
    """The deployed integer weights, for reports: ``layers.{i}.weight`` (int8 [out, in], exact
    zeros are pruned), ``layers.{i}.weight_scale`` (float32 [out]), and the first test sample
    (``sample.input`` float32 [in], ``sample.label`` int64 [1]) to overlay the masks on."""
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    for i, layer in enumerate(cand.qmodel.layers):
        tensors[f"layers.{i}.weight"] = np.ascontiguousarray(layer.weight, dtype=np.int8)
        tensors[f"layers.{i}.weight_scale"] = np.ascontiguousarray(
            layer.weight_scale, dtype=np.float32
        )
    tensors["sample.input"] = np.ascontiguousarray(data.test_x[0].numpy(), dtype=np.float32)
    tensors["sample.label"] = np.asarray([int(data.test_y[0])], dtype=np.int64)
    metadata = {"dataset": data.name, "image_shape": ",".join(map(str, data.image_shape))}
    save_file(tensors, str(path), metadata=metadata)


def write_deployment(
    out: OutputDir | str | Path,
    compression: Compression,
    dense: DenseFacts,
    data: Splits,
    budget_text: str,
    force: bool = False,
    extra: dict[str, Any] | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Write ``out/`` (report.json, prunekit_model.h/.c, harness.c, weights.safetensors) and
    return the report.

    ``out``: an ``OutputDir`` checked before the work, or a path (checked now, as
    ``prunekit.mcu.deploy.write_deployment()``'s output)."""
    started = time.perf_counter()
    target = (
        out
        if isinstance(out, OutputDir)
        else check_output_dir(out, "prunekit.mcu.deploy.write_deployment()", force=force)
    )
    best = compression.best
    source = generate_c(best.qmodel, best.encodings, prefix=PREFIX)
    report: dict[str, Any] = {}

    def writer(staging: Path) -> None:
        scratch = staging / ".scratch"
        c_facts = _c_section(best, source, data, scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        (staging / source.header_name).write_text(source.header)
        (staging / source.source_name).write_text(source.source)
        from prunekit.mcu.compile import write_harness

        write_harness(source, staging)
        _write_weights(staging / WEIGHTS_FILE, best, data)
        test_accuracy = integer_accuracy(best.qmodel, data.test_x, data.test_y)
        report.update({
            "prunekit_version": __version__,
            "dataset": data.name,
            "test_samples": len(data.test_y),
            "flash_budget": compression.budget,
            "flash_budget_text": budget_text,
            "dense": {
                "arch": "-".join(map(str, dense.arch)),
                "accuracy": dense.accuracy,
                "bytes": dense.bytes,
                "params": dense.params,
            },
            "compressed": {
                "accuracy": test_accuracy,
                "bytes": best.bytes,
                "weight_bytes": best.report.weights,
                "nonzeros": best.nonzeros,
                "values": best.name,
                "shapes": [list(layer.shape) for layer in best.report.layers],
                "layers": [
                    {
                        "shape": list(layer.shape),
                        "format": layer.format,
                        "params": layer.params,
                        "weights": layer.weights,
                        "bias": layer.bias,
                        "multiplier": layer.multiplier,
                        "shift": layer.shift,
                        "total": layer.total,
                    }
                    for layer in best.report.layers
                ],
            },
            "compression_ratio": dense.bytes / best.bytes,
            "accuracy_delta_points": 100 * (test_accuracy - dense.accuracy),
            "candidates": [
                {
                    "values": cand.name,
                    "bytes": cand.bytes,
                    "planned_density": cand.planned_density,
                    "nonzeros": cand.nonzeros,
                    "val_accuracy": cand.val_accuracy,
                    "chosen": cand is best,
                }
                for cand in compression.candidates
            ],
            **c_facts,
            "files": [source.header_name, source.source_name, "harness.c", WEIGHTS_FILE],
            **(extra or {}),
        })  # fmt: skip
        report["seconds_writing"] = round(time.perf_counter() - started, 2)
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    target.write(writer, log)
    return report
