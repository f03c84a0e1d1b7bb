"""One sentence of advice that follows from the measured rows alone.

``recommend(rows, device_name)`` reads nothing but the rows (``strategy``, ``level``,
``kernel``, ``batch_size``, ``speedup``; ``speedup`` None for a row not measured), so a test
can feed it any table. The rules:

* a row *pays* when its measured speedup is at least ``PAYS`` (1.05x: less is within what a
  shared machine's noise and per-call overheads move);
* the best row is the one with the highest speedup (the earlier row on a tie);
* kinds of pruning come in two families: ``structured`` (channels, blocks: the model shrinks)
  and ``sparse`` (unstructured, 2:4: the shapes stay, zeros in the weights). The sentence
  names the best row, and sets against it the best row of the other family (for the sparse
  family the most aggressive unstructured level measured, the one that would pay if any did).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PAYS = 1.05
STRUCTURED = ("channels", "blocks")
SPARSE = ("unstructured", "2:4")
KERNELS = {"dense": "dense kernels", "csr": "CSR sparse kernels",
           "semi-structured": "sparse tensor cores"}  # fmt: skip


def label(row: Mapping[str, Any]) -> str:
    """How a row's pruning is said in a sentence: '50% channels', 'unstructured 90% (dense
    kernels)', '2:4 sparsity (sparse tensor cores)', '25% of residual blocks dropped'."""
    strategy, level = row["strategy"], float(row["level"])
    if strategy == "channels":
        return f"{level:.0%} channels"
    if strategy == "blocks":
        return f"{level:.0%} of residual blocks dropped"
    kernel = KERNELS.get(row.get("kernel") or "", row.get("kernel") or "")
    if strategy == "2:4":
        return f"2:4 sparsity ({kernel})" if kernel else "2:4 sparsity"
    return f"{strategy} {level:.0%}" + (f" ({kernel})" if kernel else "")


def _family(row: Mapping[str, Any]) -> str:
    return "structured" if row["strategy"] in STRUCTURED else "sparse"


def _best(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    best = None
    for row in rows:
        if best is None or row["speedup"] > best["speedup"]:
            best = row
    return best


def _contrast(rows: Sequence[Mapping[str, Any]], family: str) -> Mapping[str, Any] | None:
    """The row of ``family`` to set against the winner: its best, and for the sparse family
    the best among the highest unstructured level measured (when there is one)."""
    mine = [r for r in rows if _family(r) == family]
    if family == "sparse" and not any(r["speedup"] >= PAYS for r in mine):
        unstructured = [r for r in mine if r["strategy"] == "unstructured"]
        if unstructured:
            top = max(float(r["level"]) for r in unstructured)
            mine = [r for r in unstructured if float(r["level"]) == top]
    return _best(mine)


def _speed(row: Mapping[str, Any], batches: int) -> str:
    where = f" (batch {row['batch_size']})" if batches > 1 else ""
    return f"{row['speedup']:.2f}x{where}"


def _at(row: Mapping[str, Any], batches: int) -> str:
    return f"{_speed(row, batches)} at {label(row)}"


def recommend(rows: Sequence[Mapping[str, Any]], device_name: str) -> str:
    """The one-sentence recommendation for ``rows`` measured on ``device_name`` ('this CPU')."""
    measured = [r for r in rows if r.get("speedup") is not None]
    if not measured:
        return (f"on {device_name} no kind of pruning could be measured, so there is nothing "
                "to recommend; see each row's note")  # fmt: skip
    batches = len({r["batch_size"] for r in measured})
    best = _best(measured)
    assert best is not None
    if best["speedup"] < PAYS:
        return (f"on {device_name} no kind of pruning pays in latency: the best is "
                f"{_at(best, batches)}; prune for size here, not for speed")  # fmt: skip
    family = _family(best)
    other = "sparse" if family == "structured" else "structured"
    contrast = _contrast(measured, other)
    tail = f"; {label(contrast)} gives {_speed(contrast, batches)}" if contrast else ""
    if contrast is not None and contrast["speedup"] >= PAYS:
        return f"on {device_name} {label(best)} pays most: {_speed(best, batches)}{tail}"
    return f"on {device_name} only {family} pruning pays: {_at(best, batches)}{tail}"
