"""What a latency cut is worth: the annual GPU cost of serving a model before and after pruning.

The cost model is the usual cloud one: serving ``qps`` inferences per second for ``hours`` a
year, each inference taking ``seconds_per_inference`` GPU-seconds (the latency measured at the
serving batch size divided by that batch size), on GPUs kept busy a fraction ``utilization``
of the time, costs::

    qps * hours * 3600 * seconds_per_inference / (3600 * utilization) * price_per_hour

and needs ``ceil(qps * seconds_per_inference / utilization)`` GPUs at that peak rate. With
``hours = 8760`` (a year, 31,536,000 s) this is the formula of the issue that asked for it:
100 QPS at 4.0 ms per inference on an L4 at $0.805/h costs $4,701 a year at 60% utilisation
($2,821 at 100%); at 2.5 ms, $2,938 ($1,763).

Prices come from a dated table shipped with prunekit (``gpu_prices.json``: list prices, their
date and source printed next to every figure) or from the user (``price=``). The latency is
the one prunekit measured; where it was measured on another device than the priced GPU, the
projection says so and how it used it (``scaled_from``).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from prunekit.errors import InvalidValueError

HOURS_PER_YEAR = 8760.0  # 365 days: 31,536,000 s
PRICES_FILE = Path(__file__).with_name("gpu_prices.json")
DEFAULTS = {"gpu": "L4", "qps": 100.0, "utilization": 0.6}


class CostSpecError(InvalidValueError):
    """A ``--cost`` spec or cost file that cannot be used."""


@cache
def price_table() -> dict[str, Any]:
    """The shipped GPU price table (``gpus``: name -> price_per_hour, instance; ``as_of``;
    ``source``)."""
    return json.loads(PRICES_FILE.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class CostSpec:
    """One GPU type's serving assumptions. ``batch_size`` None: the smallest measured batch
    size. ``dense_ms``: the dense model's latency at that batch size on this GPU, where the
    measurement was taken elsewhere (the final model's is then ``dense_ms / speedup``)."""

    gpu: str
    price_per_hour: float
    qps: float
    utilization: float
    hours: float = HOURS_PER_YEAR
    batch_size: int | None = None
    dense_ms: float | None = None
    price_source: str = ""
    price_as_of: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_KEYS = ("gpu", "price", "qps", "utilization", "hours", "batch_size", "dense_ms")


def _positive(key: str, text: Any, *, upper: float | None = None) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise CostSpecError(f"cost {key}={text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise CostSpecError(f"cost {key} must be a positive number, got {text!r}")
    if upper is not None and value > upper:
        raise CostSpecError(f"cost {key} must be at most {upper:g}, got {text!r}")
    return value


def cost_spec(values: Mapping[str, Any]) -> CostSpec:
    """A CostSpec from ``{gpu, price, qps, utilization, hours, batch_size, dense_ms}``; the GPU's
    price comes from the shipped table unless ``price`` is given (then any GPU name is fine)."""
    for key in values:
        if key not in _KEYS:
            close = difflib.get_close_matches(str(key), _KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CostSpecError(f"unknown cost key {key!r}{hint}; known: {', '.join(_KEYS)}")
    merged = {**DEFAULTS, **{k: v for k, v in values.items() if v is not None}}
    table = price_table()
    gpu = str(merged["gpu"]).strip()
    known = {name.lower(): name for name in table["gpus"]}
    if "price" in merged:
        price = _positive("price", merged["price"])
        source, as_of = "given", None
        gpu = known.get(gpu.lower(), gpu)
    elif gpu.lower() in known:
        gpu = known[gpu.lower()]
        entry = table["gpus"][gpu]
        price = float(entry["price_per_hour"])
        source, as_of = f"{table['source']}; {entry['instance']}", table["as_of"]
    else:
        raise CostSpecError(
            f"no price for GPU {gpu!r}: the table ({table['as_of']}) knows "
            f"{', '.join(table['gpus'])}; give price=USD_PER_HOUR for another GPU"
        )
    batch = merged.get("batch_size")
    if batch is not None:
        b = _positive("batch_size", batch)
        if b != int(b):
            raise CostSpecError(f"cost batch_size must be a whole number, got {batch!r}")
        batch = int(b)
    dense_ms = merged.get("dense_ms")
    return CostSpec(
        gpu=gpu,
        price_per_hour=price,
        qps=_positive("qps", merged["qps"]),
        utilization=_positive("utilization", merged["utilization"], upper=1.0),
        hours=_positive("hours", merged.get("hours", HOURS_PER_YEAR), upper=8784.0),
        batch_size=batch,
        dense_ms=None if dense_ms is None else _positive("dense_ms", dense_ms),
        price_source=source,
        price_as_of=as_of,
    )


def parse_cost(text: str) -> CostSpec:
    """``gpu=L4,price=0.805,qps=100,utilization=0.6`` (every key optional)."""
    values: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value.strip():
            raise CostSpecError(f"cost spec part {part!r} is not KEY=VALUE (in {text!r})")
        if key.strip() in values:
            raise CostSpecError(f"cost spec key {key.strip()!r} is given twice (in {text!r})")
        values[key.strip()] = value.strip()
    return cost_spec(values)


def load_cost_file(path: str | Path) -> list[CostSpec]:
    """A YAML or JSON file: one mapping of cost keys, a list of them, or ``{gpus: [...]}``."""
    from prunekit._files import read_yaml

    p = Path(path)
    data = read_yaml(p, CostSpecError, what="the cost file ", kind="YAML/JSON")
    if isinstance(data, Mapping) and "gpus" in data:
        data = data["gpus"]
    entries = [data] if isinstance(data, Mapping) else data
    if not isinstance(entries, list) or not entries:
        raise CostSpecError(f"{p}: expected a mapping of cost keys or a list of them")
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise CostSpecError(f"{p}: entry {i + 1} is not a mapping of cost keys")
        try:
            specs.append(cost_spec(entry))
        except CostSpecError as exc:
            raise CostSpecError(f"{p}, entry {i + 1}: {exc}") from None
    return specs


def annual_cost(qps: float, seconds_per_inference: float, utilization: float,
                price_per_hour: float, hours: float = HOURS_PER_YEAR) -> float:  # fmt: skip
    """GPU cost of a year (``hours`` of it) of serving: the module docstring's formula."""
    gpu_hours = qps * hours * 3600 * seconds_per_inference / (3600 * utilization)
    return gpu_hours * price_per_hour


def gpus_needed(qps: float, seconds_per_inference: float, utilization: float) -> int:
    """GPUs to serve ``qps`` at peak, each busy at most ``utilization`` of the time."""
    return max(1, math.ceil(qps * seconds_per_inference / utilization - 1e-9))


def _pick_row(spec: CostSpec, rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    sizes = sorted(int(r["batch_size"]) for r in rows)
    if spec.batch_size is None:
        return next(r for r in rows if int(r["batch_size"]) == sizes[0])
    for r in rows:
        if int(r["batch_size"]) == spec.batch_size:
            return r
    raise CostSpecError(
        f"cost batch_size={spec.batch_size} was not measured (measured: "
        f"{', '.join(map(str, sizes))}); price a measured batch size"
    )


def _same_gpu(gpu: str, row: Mapping[str, Any]) -> bool:
    name = str(row.get("gpu_name") or "")
    return row.get("device") == "cuda" and bool(name) and gpu.lower() in name.lower()


def project(spec: CostSpec, latency: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The cost record of one GPU type from measured latency rows
    (``{batch_size, device, dense_ms, final_ms, speedup}``); ``None`` figures and a ``reason``
    when no latency was measured."""
    record: dict[str, Any] = {
        "gpu": spec.gpu, "price_per_hour": spec.price_per_hour, "qps": spec.qps,
        "utilization": spec.utilization, "hours": spec.hours, "batch_size": spec.batch_size,
        "price_source": spec.price_source, "price_as_of": spec.price_as_of,
        "annual_dense": None, "annual_final": None, "annual_saving": None,
        "gpus_dense": None, "gpus_final": None, "scaled_from": None,
        "seconds_per_inference": None,
    }  # fmt: skip
    if not latency:
        record["reason"] = "latency not measured: no cost can be projected"
        return record
    row = _pick_row(spec, latency)
    batch = int(row["batch_size"])
    speedup = float(row["speedup"])
    if spec.dense_ms is not None:
        dense_ms, final_ms = spec.dense_ms, spec.dense_ms / speedup
        record["scaled_from"] = {
            "device": row.get("device", "cpu"),
            "method": f"dense {spec.dense_ms:g} ms per batch of {batch} on {spec.gpu} as given; "
            f"final = that / the speedup measured on {_where(row)} ({speedup:.2f}x)",
        }
    else:
        dense_ms, final_ms = float(row["dense_ms"]), float(row["final_ms"])
        if not _same_gpu(spec.gpu, row):
            record["scaled_from"] = {
                "device": row.get("device", "cpu"),
                "method": f"the latency measured on {_where(row)} used as the {spec.gpu}'s "
                f"(the saving is that measurement's {1 - 1 / speedup:.1%} cut); give "
                f"dense_ms= (the dense model's ms per batch on the {spec.gpu}) to scale from "
                "a figure of the priced GPU",
            }
    per_dense, per_final = dense_ms / 1000 / batch, final_ms / 1000 / batch
    dense = annual_cost(spec.qps, per_dense, spec.utilization, spec.price_per_hour, spec.hours)
    final = annual_cost(spec.qps, per_final, spec.utilization, spec.price_per_hour, spec.hours)
    record.update({
        "batch_size": batch,
        "seconds_per_inference": {"dense": per_dense, "final": per_final},
        "annual_dense": dense, "annual_final": final, "annual_saving": dense - final,
        "gpus_dense": gpus_needed(spec.qps, per_dense, spec.utilization),
        "gpus_final": gpus_needed(spec.qps, per_final, spec.utilization),
    })  # fmt: skip
    return record


def _where(row: Mapping[str, Any]) -> str:
    device = str(row.get("device", "cpu"))
    name = row.get("gpu_name") if device == "cuda" else row.get("cpu_name")
    backend = row.get("backend", "eager")
    return f"{device}{f' ({name})' if name else ''}, {backend}, batch {row['batch_size']}"


def total(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The sum over GPU types (None when any of them could not be projected)."""
    if not records or any(r["annual_dense"] is None for r in records):
        return None
    keys = ("annual_dense", "annual_final", "annual_saving", "gpus_dense", "gpus_final")
    return {key: sum(r[key] for r in records) for key in keys}
