"""The report's tables, built once from ``report.json`` and rendered as HTML and as Markdown.

A ``Cell`` keeps the text shown and, for a number, the ``report.json`` path it shows and how
it was rounded (``scale``, ``digits``): the page carries both (``data-json``, ``data-scale``,
``data-digits``), so a test can check every printed figure against the file it came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Cell:
    text: str
    path: str | None = None  # the report.json path, "runs/0/retention"
    scale: float = 1.0
    digits: int = 0
    muted: bool = False  # "not measured", notes


@dataclass
class Table:
    id: str
    title: str
    header: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    caption: str = ""


def _get(report: dict[str, Any], path: str) -> Any:
    value: Any = report
    for part in path.split("/"):
        if value is None:
            return None
        if isinstance(value, list):
            value = value[int(part)] if int(part) < len(value) else None
        else:
            value = value.get(part)
    return value


def number(report: dict[str, Any], path: str, *, scale: float = 1.0, digits: int = 0,
           unit: str = "", prefix: str = "", missing: str = NOT_MEASURED) -> Cell:  # fmt: skip
    value = _get(report, path)
    if value is None or isinstance(value, bool):
        return Cell(missing, muted=True)
    sign = "-" if value * scale < 0 and prefix else ""
    shown = abs(value * scale) if prefix else value * scale
    return Cell(f"{sign}{prefix}{shown:,.{digits}f}{unit}", path, scale, digits)


def text(value: Any, missing: str = NOT_MEASURED) -> Cell:
    return Cell(missing, muted=True) if value is None else Cell(str(value))


def _metric_cell(report: dict[str, Any], path: str, metric: str | None) -> Cell:
    if metric in ("top1", "top5", "miou", "dice", "pixel_accuracy"):
        return number(report, path, scale=100, digits=2, unit=" %")
    return number(report, path, digits=4)


def _metric_name(metric: str | None) -> str:
    return {"top1": "top-1", "miou": "mIoU"}.get(metric or "", metric or "metric")


PERCENT: dict[str, Any] = {"scale": 100, "digits": 2, "unit": " %"}
MS: dict[str, Any] = {"digits": 3, "unit": " ms"}
TIMES: dict[str, Any] = {"digits": 2, "unit": "x"}
DOLLARS: dict[str, Any] = {"prefix": "$", "digits": 0}
# the headline's numeric rows after the accuracy block: (label, path under runs/i, format)
HEADLINE_ROWS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("MACs, dense", "macs/dense", {}),
    ("MACs, final", "macs/final", {}),
    ("MACs cut", "macs/reduction", {"scale": 100, "digits": 1, "unit": " %"}),
    ("parameters, dense", "params/dense", {}),
    ("parameters, final", "params/final", {}),
    ("parameters cut", "params/reduction", {"scale": 100, "digits": 1, "unit": " %"}),
    ("bytes float32, final", "bytes/float32/final", {"unit": " B"}),
    ("bytes int8 (weights), final", "bytes/int8/final", {"unit": " B"}),
    ("bytes as deployed", "bytes/deployed/bytes", {"unit": " B", "missing": "no deployed file"}),
    ("latency, dense", "latency/0/dense_ms", MS),
    ("latency, final", "latency/0/final_ms", MS),
    ("latency saved", "latency/0/saved_ms", MS),
    ("speedup, measured", "latency/0/speedup", TIMES),
    ("speedup, ideal (from MACs)", "latency/0/ideal", TIMES),
    ("annual GPU cost, dense", "cost/annual_dense", DOLLARS),
    ("annual GPU cost, final", "cost/annual_final", DOLLARS),
    ("annual saving", "cost/annual_saving", DOLLARS),
)


def _numbers(report: dict[str, Any], path: str,
             fmt: dict[str, Any]) -> Callable[[int, dict[str, Any]], Cell]:  # fmt: skip
    return lambda i, _run: number(report, f"runs/{i}/{path}", **fmt)


def headline(report: dict[str, Any]) -> Table:
    """One column per run: the figures a decision needs."""
    runs = report["runs"]
    table = Table("headline", "Headline", ["", *[r["name"] for r in runs]],
                  caption="Accuracy on held-out data; MACs and parameters counted on the "
                  "model's input shape; latency measured interleaved on the named device, at "
                  "the smallest batch size measured; cost at the assumptions of the cost "
                  "section." + (" Each run's latency was timed interleaved with its own dense "
                  "model: compare speedups across columns; absolute milliseconds drift with the "
                  "machine between runs." if len(runs) > 1 else ""))  # fmt: skip

    def row(label: str, make: Callable[[int, dict[str, Any]], Cell]) -> None:
        table.rows.append([Cell(label), *[make(i, r) for i, r in enumerate(runs)]])

    def metric(i: int, key: str) -> Cell:
        return _metric_cell(report, f"runs/{i}/accuracy/{key}", runs[i]["accuracy"]["metric"])

    row("metric", lambda i, r: text(_metric_name(r["accuracy"]["metric"])
                                    if r["accuracy"]["final"] is not None else None))  # fmt: skip
    row("accuracy, dense", lambda i, r: metric(i, "dense"))
    row("accuracy, final", lambda i, r: metric(i, "final"))
    row("retention (final / dense)", lambda i, r: number(report, f"runs/{i}/retention", **PERCENT))
    row("evaluated on (samples)", lambda i, r: number(
        report, f"runs/{i}/accuracy/samples", unit=f" ({r['accuracy']['split']})"))  # fmt: skip
    for label, path, fmt in HEADLINE_ROWS:
        if label == "latency, dense":
            row("latency measured at", lambda i, r: text(_where(r)))
        row(label, _numbers(report, path, fmt))
    return table


def _money(report: dict[str, Any], path: str) -> Cell:
    return number(report, path, prefix="$", digits=0)


def _where(run: dict[str, Any]) -> str | None:
    rows = run.get("latency") or []
    if not rows:
        return None
    r = rows[0]
    n = r.get("threads")
    threads = f", {n} thread{'s' if n != 1 else ''}" if n and r["device"] == "cpu" else ""
    return f"batch {r['batch_size']}, {r['backend']}, {r['device']}{threads}"


def latency_table(report: dict[str, Any], index: int) -> Table | None:
    run = report["runs"][index]
    if not run.get("latency"):
        return None
    header = ["batch", "backend", "device", "dense ms", "final ms", "saved ms", "speedup",
              "per-round range", "ideal", "of ideal", "median stable", "dense samples/s",
              "final samples/s"]  # fmt: skip
    table = Table(f"latency-{index}", f"Measured latency: {run['name']}", header,
                  caption=f"From {run['files'].get('latency')}. Medians of interleaved rounds; "
                  "'stable' means the 95% interval of the median per-round speedup is within "
                  "5% of it.")  # fmt: skip
    for j, row in enumerate(run["latency"]):
        p = f"runs/{index}/latency/{j}"
        lo_hi = row.get("speedup_range")
        table.rows.append([
            number(report, f"{p}/batch_size"), text(row["backend"]),
            text(row["device"] + (f" ({row['gpu_name']})" if row.get("gpu_name") else "")),
            number(report, f"{p}/dense_ms", digits=3), number(report, f"{p}/final_ms", digits=3),
            number(report, f"{p}/saved_ms", digits=3),
            number(report, f"{p}/speedup", digits=2, unit="x"),
            text(f"{lo_hi[0]:.2f}x to {lo_hi[1]:.2f}x" if lo_hi else None),
            number(report, f"{p}/ideal", digits=2, unit="x"),
            number(report, f"{p}/of_ideal", scale=100, digits=0, unit=" %"),
            text({True: "yes", False: "no: noisy"}.get(row.get("stable")),
                 "n/a: under 5 rounds"),
            number(report, f"{p}/dense_throughput", digits=0),
            number(report, f"{p}/final_throughput", digits=0),
        ])  # fmt: skip
    return table


def cost_assumptions(report: dict[str, Any]) -> Table:
    a = report["cost_assumptions"]
    table = Table("cost-assumptions", "Cost assumptions",
                  ["GPU", "price per GPU-hour", "price from", "peak QPS", "utilisation",
                   "batch size", "hours per year", "dense latency given"],
                  caption=a["formula"] + ". " + a["price_table"]["note"])  # fmt: skip
    for k, spec in enumerate(a["specs"]):
        p = f"cost_assumptions/specs/{k}"
        source = (f"the price table of {spec['price_as_of']} ({spec['price_source']})"
                  if spec["price_as_of"] else "given with --cost")  # fmt: skip
        table.rows.append([
            text(spec["gpu"]), number(report, f"{p}/price_per_hour", prefix="$", digits=4),
            text(source), number(report, f"{p}/qps", digits=1),
            number(report, f"{p}/utilization", scale=100, digits=0, unit=" %"),
            number(report, f"{p}/batch_size", missing="smallest measured"),
            number(report, f"{p}/hours", digits=0),
            number(report, f"{p}/dense_ms", digits=3, unit=" ms", missing="no"),
        ])  # fmt: skip
    return table


def cost_table(report: dict[str, Any]) -> Table:
    table = Table("cost", "Projected annual GPU cost",
                  ["run", "GPU", "batch", "GPU-ms per inference, dense -> final",
                   "annual, dense", "annual, final", "annual saving", "GPUs at peak, dense",
                   "GPUs at peak, final", "latency source"])  # fmt: skip
    for i, run in enumerate(report["runs"]):
        for k, cost in enumerate(run["cost_by_gpu"]):
            p = f"runs/{i}/cost_by_gpu/{k}"
            per = cost.get("seconds_per_inference")
            scaled = cost.get("scaled_from")
            table.rows.append([
                text(run["name"]), text(cost["gpu"]), number(report, f"{p}/batch_size"),
                text(f"{per['dense'] * 1000:.4f} -> {per['final'] * 1000:.4f}" if per else None),
                _money(report, f"{p}/annual_dense"), _money(report, f"{p}/annual_final"),
                _money(report, f"{p}/annual_saving"), number(report, f"{p}/gpus_dense"),
                number(report, f"{p}/gpus_final"),
                text(cost.get("reason") or (f"scaled: {scaled['method']}" if scaled
                                            else "measured on this GPU")),
            ])  # fmt: skip
        if len(run["cost_by_gpu"]) > 1 and run.get("cost_total"):
            p = f"runs/{i}/cost_total"
            table.rows.append([
                text(run["name"]), Cell("total"), Cell(""), Cell(""),
                _money(report, f"{p}/annual_dense"), _money(report, f"{p}/annual_final"),
                _money(report, f"{p}/annual_saving"), number(report, f"{p}/gpus_dense"),
                number(report, f"{p}/gpus_final"), Cell(""),
            ])  # fmt: skip
    return table


def bytes_table(report: dict[str, Any]) -> Table:
    table = Table("bytes", "Sizes",
                  ["run", "float32 dense", "float32 final", "int8 dense", "int8 final",
                   "deployed format", "deployed bytes"],
                  caption="float32 and int8 are the parameters at 4 and 1 byte each (weights "
                  "only); deployed is the file the run wrote.")  # fmt: skip
    for i, run in enumerate(report["runs"]):
        p = f"runs/{i}/bytes"
        deployed = run["bytes"].get("deployed") or {}
        table.rows.append([
            text(run["name"]), number(report, f"{p}/float32/dense", unit=" B"),
            number(report, f"{p}/float32/final", unit=" B"),
            number(report, f"{p}/int8/dense", unit=" B"),
            number(report, f"{p}/int8/final", unit=" B"),
            text(deployed.get("format"), "none"),
            number(report, f"{p}/deployed/bytes", unit=" B", missing="none"),
        ])  # fmt: skip
    return table


def mcu_tables(report: dict[str, Any], index: int) -> list[Table]:
    run = report["runs"][index]
    mcu = run.get("mcu")
    if not mcu:
        return []
    p = f"runs/{index}/mcu"
    check = mcu.get("c_check") or {}
    flash = Table(f"mcu-{index}", f"Microcontroller build: {run['name']}",
                  ["budget", "stored model", "flash (compiled object)", "of which code",
                   "RAM", "C = Python on test samples", "samples"],
                  caption=f"From {run['files'].get('mcu')}; flash "
                  f"{(mcu.get('flash') or {}).get('measured_from', 'not compiled')}.")  # fmt: skip
    flash.rows.append([
        number(report, f"{p}/budget", unit=" B"),
        number(report, f"runs/{index}/bytes/deployed/bytes", unit=" B"),
        number(report, f"{p}/flash/total", unit=" B", missing="not compiled"),
        number(report, f"{p}/flash/code", unit=" B", missing="not compiled"),
        number(report, f"{p}/flash/ram", unit=" B", missing="not compiled"),
        number(report, f"{p}/c_check/agreement", scale=100, digits=2, unit=" %",
               missing=check.get("reason") or "not checked"),
        number(report, f"{p}/c_check/samples", missing="-"),
    ])  # fmt: skip
    layers = Table(
        f"mcu-layers-{index}",
        f"Storage per layer: {run['name']}",
        ["layer", "shape", "format", "bytes"],
    )
    for j, layer in enumerate(mcu.get("layers") or []):
        layers.rows.append([Cell(str(j)), text("x".join(map(str, layer["shape"]))),
                            text(layer["format"]),
                            number(report, f"{p}/layers/{j}/bytes", unit=" B")])  # fmt: skip
    return [flash, layers]


def sparsity_table(report: dict[str, Any], index: int) -> Table | None:
    run = report["runs"][index]
    if not run.get("sparsity"):
        return None
    table = Table(f"sparsity-{index}", f"Per-layer sparsity: {run['name']}",
                  ["layer", "shape", "pattern", "density", "non-zeros"],
                  caption=f"From {run['weights_file']}.")  # fmt: skip
    for j, layer in enumerate(run["sparsity"]):
        p = f"runs/{index}/sparsity/{j}"
        table.rows.append([text(layer["name"]), text("x".join(map(str, layer["shape"]))),
                           text(layer["pattern"]),
                           number(report, f"{p}/density", scale=100, digits=1, unit=" %"),
                           text(f"{layer['params'] - layer['zeros']:,}")])  # fmt: skip
    return table


def sparsify_table(report: dict[str, Any], index: int) -> Table | None:
    """What ``prunekit sparsify`` did: the sparsity reached and the bytes of each storage
    format of the sparsified weights."""
    run = report["runs"][index]
    facts = run.get("sparsify")
    if not facts:
        return None
    asked = (f"{facts['nm'][0]}:{facts['nm'][1]}" if facts.get("nm")
             else f"{facts['target']:.0%}" if facts.get("target") is not None else None)  # fmt: skip
    table = Table(f"sparsity-summary-{index}", f"Sparsified: {run['name']}",
                  ["asked", "reached", "schedule", "allocation", "targeted weights",
                   "non-zero", "bytes dense", "bytes bitmask", "bytes CSR", "smallest",
                   "sparse.safetensors"],
                  caption=f"From {run['files'].get('sparsify')}. Bytes of the sparsified "
                  "tensors only; bitmask = one bit per weight plus the non-zeros, CSR = int32 "
                  "row pointers and column indices plus the non-zeros."
                  + (f" Left dense: {', '.join(s['name'] for s in facts['skipped'][:6])}."
                     if facts.get("skipped") else ""))  # fmt: skip
    p = f"runs/{index}/sparsify"
    table.rows.append([
        text(asked), number(report, f"{p}/sparsity", scale=100, digits=2, unit=" %"),
        text(facts.get("schedule")), text(facts.get("allocation")),
        number(report, f"{p}/targeted_weights"), number(report, f"{p}/nonzero_weights"),
        number(report, f"{p}/storage/dense", unit=" B"),
        number(report, f"{p}/storage/bitmask", unit=" B"),
        number(report, f"{p}/storage/csr", unit=" B"),
        text((facts.get("storage") or {}).get("best")),
        number(report, f"{p}/sparse_file_bytes", unit=" B", missing="none"),
    ])  # fmt: skip
    return table


def all_tables(report: dict[str, Any]) -> list[Table]:
    """Every table, in page order (headline first; without runs, only the advice)."""
    from prunekit.report.advice import advice_tables

    n = len(report["runs"])
    tables: list[Table | None] = []
    if n:
        tables.append(headline(report))
        tables += [latency_table(report, i) for i in range(n)]
        tables += [cost_assumptions(report), cost_table(report), bytes_table(report)]
    tables += advice_tables(report)
    for i in range(n):
        tables += mcu_tables(report, i)
        tables.append(sparsify_table(report, i))
        tables.append(sparsity_table(report, i))
    return [t for t in tables if t is not None]
