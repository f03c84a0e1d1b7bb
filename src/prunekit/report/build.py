"""Assemble ``report.json`` from the inputs' facts and the cost assumptions, and write the report.

``build_report`` reads every input (``sources``), checks they can be compared (one model),
projects the serving cost per GPU type (``costs``) and adds the per-layer sparsity of the
final weights. ``write_report`` draws the figures and writes ``report.json``, ``report.html``
(one self-contained file), ``report.md`` and ``figures/*.png`` atomically into ``--out``.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunekit._outputs import OutputDir
from prunekit._version import __version__
from prunekit.report import costs as cost_model
from prunekit.report.sources import ReportInputError, read_input

FORMAT = "prunekit-report"
SPARSE_LAYER = 0.1  # a layer with at least this share of exact zeros is reported as sparse


def _unique_names(runs: list[dict[str, Any]]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        base = run["name"]
        if base in seen:
            parent = Path(run["path"]).parent.name
            run["name"] = f"{parent}/{base}" if parent else f"{base} ({seen[base] + 1})"
        seen[base] = seen.get(base, 0) + 1


def _identity(run: dict[str, Any]) -> tuple[Any, Any]:
    return run["macs"]["dense"], run["params"]["dense"]


def check_comparable(runs: Sequence[dict[str, Any]]) -> None:
    """Several inputs compare pruned versions of one dense model: the same dense MACs and
    parameters (where both are known). Anything else is refused in one line."""
    known = [r for r in runs if None not in _identity(r)]
    for other in known[1:]:
        first = known[0]
        if _identity(other) != _identity(first):

            def describe(r: dict[str, Any]) -> str:
                macs, params = _identity(r)
                return f"{r['name']} ({r['model']['name']}: {macs:,} MACs, {params:,} params dense)"

            raise ReportInputError(
                f"these inputs prune different models, {describe(first)} and {describe(other)}: "
                "a side-by-side report compares versions of one model; report them separately"
            )


def sparsity_of(weights_file: str, *, mcu: bool) -> list[dict[str, Any]]:
    """Per-layer density of the stored weights (2-D and higher ``*weight`` tensors); empty when
    no layer is sparse (then the model was pruned structurally, if at all)."""
    from safetensors.numpy import load_file

    from prunekit.report.masks import sparsity_of_arrays

    arrays = {k: v for k, v in load_file(weights_file).items()
              if k.endswith("weight") and v.ndim >= 2}  # fmt: skip
    layers = sparsity_of_arrays(arrays)
    if not mcu and all(1 - layer["density"] < SPARSE_LAYER for layer in layers):
        return []
    return layers


def build_report(
    inputs: Sequence[str | Path],
    cost_specs: Sequence[cost_model.CostSpec] = (),
    *,
    title: str | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``report.json`` for ``inputs`` (output directories of prunekit commands), in order."""
    if not inputs:
        raise ReportInputError("give at least one prunekit output directory to report on")
    read = [read_input(p, names[i] if names and i < len(names) else None)
            for i, p in enumerate(inputs)]  # fmt: skip
    # an advise record measures a machine, not a pruned model: it gets a section, not a column
    advice = [r for r in read if r["kind"] == "advise"]
    runs = [r for r in read if r["kind"] != "advise"]
    _unique_names(runs)
    check_comparable(runs)
    specs = list(cost_specs) or [cost_model.cost_spec({})]
    for run in runs:
        if run["weights_file"]:
            run["sparsity"] = sparsity_of(run["weights_file"], mcu=run["kind"] == "mcu")
        else:
            run["sparsity"] = []
        try:
            by_gpu = [cost_model.project(spec, run["latency"]) for spec in specs]
        except cost_model.CostSpecError as exc:
            raise cost_model.CostSpecError(f"{run['name']}: {exc}") from None
        run["cost"] = by_gpu[0]
        run["cost_by_gpu"] = by_gpu
        run["cost_total"] = cost_model.total(by_gpu)
    table = cost_model.price_table()
    return {
        "format": FORMAT,
        "version": 1,
        "title": title or _default_title(runs, advice),
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "prunekit": __version__,
        "inputs": [str(p) for p in inputs],
        "cost_assumptions": {
            "specs": [s.to_dict() for s in specs],
            "defaulted": not cost_specs,
            "price_table": {
                "as_of": table["as_of"],
                "source": table["source"],
                "currency": table["currency"],
                "note": table["note"],
            },
            "formula": "annual cost = QPS x hours x 3600 x GPU-seconds per inference / "
            "(3600 x utilisation) x price per GPU-hour; GPU-seconds per inference = latency at "
            "the priced batch size / that batch size",
        },
        "runs": runs,
        "advice": advice,
    }


def _default_title(runs: Sequence[dict[str, Any]], advice: Sequence[dict[str, Any]]) -> str:
    if not runs:
        return f"What pruning pays on this machine: {advice[0]['model'] or advice[0]['name']}"
    model = runs[0]["model"]["name"] or runs[0]["name"]
    return f"Pruning report: {model}"


def write_report(report: dict[str, Any], out: OutputDir, log: Any = None) -> Path:
    """Draw the figures and write report.json, report.html, report.md and figures/ into
    ``out`` (atomically: a failure leaves no half-written report)."""
    from prunekit.report.figures import draw_figures
    from prunekit.report.html import render_html
    from prunekit.report.markdown import render_markdown

    figures = draw_figures(report)
    report["figures"] = [{k: v for k, v in f.items() if k != "png"} for f in figures]

    def writer(staging: Path) -> None:
        (staging / "figures").mkdir()
        for figure in figures:
            (staging / figure["file"]).write_bytes(figure["png"])
        (staging / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
        (staging / "report.html").write_text(render_html(report, figures), encoding="utf-8")
        (staging / "report.md").write_text(render_markdown(report), encoding="utf-8")

    return out.write(writer, log)


__all__ = ["ReportInputError", "build_report", "check_comparable", "write_report"]
