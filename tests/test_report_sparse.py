"""``prunekit report`` on the outputs of ``sparsify`` and ``advise``: the sparsified model's
figures traced to ``sparsify.json`` and the weights, its diagnosis pictures shown as drawn,
and the advise table as its own section (also alone), every number traceable to report.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from _reports import make_run
from test_report import _Cells, check_cells

SEGMENTER = """
import torch
from torch import nn


def segmenter():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 3, 1))
"""


def advise_record(model: str = "pkg.mod:Net") -> dict[str, Any]:
    def row(strategy: str, level: float, kernel: str, batch: int, dense: float,
            ms: float | None, label: str, note: str | None = None) -> dict[str, Any]:  # fmt: skip
        return {"strategy": strategy, "level": level, "kernel": kernel, "batch_size": batch,
                "dense_ms": dense, "ms": ms, "speedup": None if ms is None else dense / ms,
                "speedup_range": None if ms is None else [dense / ms * 0.9, dense / ms * 1.1],
                "macs_kept": None if ms is None else 1 - level, "note": note,
                "label": label}  # fmt: skip

    return {
        "format": "prunekit-advise", "version": 1, "model": model, "device": "cpu",
        "device_name": "Test CPU", "backend": "eager", "threads": 2, "batch_sizes": [1, 32],
        "rounds": 5, "input": "1x3x32x32",
        "rows": [
            row("unstructured", 0.9, "dense", 1, 4.0, 4.0, "unstructured 90% (dense kernels)"),
            row("unstructured", 0.9, "dense", 32, 40.0, 40.0, "unstructured 90% (dense kernels)"),
            row("2:4", 0.5, "semi-structured", 1, 4.0, None, "2:4 sparsity (sparse tensor cores)",
                "needs CUDA with compute capability >= 8.0 (sparse tensor cores); this is the CPU"),
            row("channels", 0.5, "dense", 1, 4.0, 2.0, "50% channels"),
            row("channels", 0.5, "dense", 32, 40.0, 16.0, "50% channels"),
        ],
        "recommendation": "on this CPU (2 threads) only structured pruning pays: 2.50x (batch "
        "32) at 50% channels; unstructured 90% (dense kernels) gives 1.00x (batch 1)",
    }  # fmt: skip


def write_advise(path: Path, record: dict[str, Any]) -> Path:
    path.mkdir(parents=True)
    (path / "advise.json").write_text(json.dumps(record))
    return path


def _report(cli: Any, tmp_path: Path, *inputs: Path) -> tuple[dict[str, Any], str]:
    out = tmp_path / "report"
    result = cli("report", *map(str, inputs), "--out", str(out))
    assert result.code == 0, result.err
    return json.loads((out / "report.json").read_text()), (out / "report.html").read_text()


@pytest.fixture(scope="module")
def sparsified(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    from prunekit.cli.main import main

    root = tmp_path_factory.mktemp("sparsified")
    (root / "seg.py").write_text(SEGMENTER)
    pixels = np.zeros((24, 24, 3), dtype=np.uint8)
    pixels[6:18, 6:18] = (200, 40, 40)
    Image.fromarray(pixels).save(root / "scene.png")
    out = root / "sp"
    args = ["sparsify", f"{root / 'seg.py'}:segmenter", "--trust-code", "--input-shape",
            "1,3,24,24", "--sparsity", "0.8", "--visualize", str(root / "scene.png"),
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return out


def test_a_sparsify_output_is_reported_from_its_record_and_weights(
    sparsified: Path, tmp_path: Path, cli: Any
) -> None:
    record = json.loads((sparsified / "sparsify.json").read_text())
    report, html = _report(cli, tmp_path, sparsified)
    (run,) = report["runs"]
    assert run["kind"] == "sparsify" and run["files"]["sparsify"].endswith("sparsify.json")
    facts = run["sparsify"]
    assert facts["sparsity"] == record["sparsity"] and facts["schedule"] == "oneshot"
    assert facts["storage"] == {
        k: record["storage"][k] for k in ("dense", "bitmask", "csr", "best")
    }
    assert facts["sparse_file_bytes"] == (sparsified / "sparse.safetensors").stat().st_size
    # parameters: every tensor of the artifact, and its non-zeros once sparsified
    weights = load_file(str(sparsified / "model.safetensors"))
    total = sum(a.size for a in weights.values())
    targeted = [a for k, a in weights.items() if k.endswith("weight")]
    zeros = sum(int((a == 0).sum()) for a in targeted)
    assert run["params"]["dense"] == total and run["params"]["final"] == total - zeros
    # the per-layer table comes from the stored weights and agrees with sparsify.json
    by_name = {layer["name"]: layer for layer in record["layers"]}
    assert [layer["name"] for layer in run["sparsity"]] == list(by_name)
    for layer in run["sparsity"]:
        assert layer["density"] == pytest.approx(by_name[layer["name"]]["density"])
    # no latency is claimed: sparsify keeps every shape
    assert run["latency"] == [] and any("advise" in n for n in run["notes"])
    # the diagnosis pictures are shown as they were drawn, byte for byte
    shown = [f for f in report["figures"] if f["id"].startswith("diagnosis-0-")]
    assert len(shown) == len(record["diagnosis"]["files"]) == 3
    for figure in shown:
        (source,) = figure["sources"]
        drawn = (tmp_path / "report" / figure["file"]).read_bytes()
        assert drawn == Path(source).read_bytes()
    parser = _Cells()
    parser.feed(html)
    assert check_cells(parser.cells, report) > 20
    assert 'id="sparsity-summary-0"' in html and 'id="sparsity-0"' in html


def test_advise_is_a_section_of_its_own_beside_a_run(tmp_path: Path, cli: Any) -> None:
    run = make_run(tmp_path / "planned")
    advice = write_advise(tmp_path / "adv", advise_record())
    report, html = _report(cli, tmp_path, run, advice)
    assert [r["kind"] for r in report["runs"]] == ["run"]  # advice is no column
    (a,) = report["advice"]
    assert a["rows"] == advise_record()["rows"] and a["file"].endswith("adv/advise.json")
    parser = _Cells()
    parser.feed(html)
    advice_cells = [c for c in parser.cells if c["data-json"].startswith("advice/")]
    assert check_cells(advice_cells, report) >= 4 * 4  # ms and speedup of every timed row
    assert "What pays on the target, measured" in html
    assert advise_record()["recommendation"] in html  # the caption says it
    assert "not timed" in html and "this is the CPU" in html
    assert "advice-0" in {f["id"] for f in report["figures"]}


def test_advise_alone_makes_a_report_and_a_foreign_record_is_refused(
    tmp_path: Path, cli: Any
) -> None:
    advice = write_advise(tmp_path / "adv", advise_record("resnet18"))
    report, html = _report(cli, tmp_path, advice)
    assert report["runs"] == [] and report["title"].endswith("resnet18")
    assert 'id="headline"' not in html and 'id="advice-0"' in html
    bad = write_advise(tmp_path / "bad", {"format": "something-else", "rows": []})
    out = tmp_path / "out"
    result = cli("report", str(bad), "--out", str(out))
    assert result.code == 1 and "is not a `prunekit advise` record" in result.err
    assert len(result.err.strip().splitlines()) == 1 and not out.exists()
