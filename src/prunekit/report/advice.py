"""The report's "what pays on this machine" section, from ``prunekit advise --out DIR`` records.

One table per record (every measured row, with the note of a row that could not be timed
here) whose caption is the recommendation, and one figure: the measured speedup of each kind
of pruning per batch size, against the 1.0x line (no gain) and the dense work each keeps.
"""

from __future__ import annotations

from typing import Any

from prunekit.report.tables import Cell, Table, number, text


def _what(row: dict[str, Any]) -> str:
    """The row's pruning as advise named it (older records: strategy, level and kernel)."""
    return row.get("label") or f"{row['strategy']} {row['level']:g} ({row['kernel']})"


def advice_table(report: dict[str, Any], index: int) -> Table:
    advice = report["advice"][index]
    threads = advice.get("threads")
    where = (f"{advice.get('device')} ({advice.get('device_name') or 'unnamed'}), "
             f"{advice.get('backend')}" + (f", {threads} threads" if threads else ""))  # fmt: skip
    table = Table(
        f"advice-{index}", f"What each kind of pruning buys, measured: {advice['model']} on {where}",
        ["pruning", "batch", "dense ms", "pruned ms", "speedup", "per-round range",
         "MACs kept", "note"],
        caption=f"Recommendation: {advice['recommendation']}. From {advice['file']}: every "
        f"variant timed interleaved with the dense model, {advice.get('rounds')} rounds; the "
        "speedup is the median of the per-round ratios. Unstructured and 2:4 keep every shape "
        "(MACs kept: the work an ideal sparse kernel would do).",
    )  # fmt: skip
    for j, row in enumerate(advice["rows"]):
        p = f"advice/{index}/rows/{j}"
        spread = row.get("speedup_range")
        table.rows.append([
            Cell(_what(row)), number(report, f"{p}/batch_size"),
            number(report, f"{p}/dense_ms", digits=3),
            number(report, f"{p}/ms", digits=3, missing="not timed"),
            number(report, f"{p}/speedup", digits=2, unit="x", missing="not timed"),
            text(f"{spread[0]:.2f}x to {spread[1]:.2f}x" if spread else None, "-"),
            number(report, f"{p}/macs_kept", scale=100, digits=1, unit=" %", missing="-"),
            text(row.get("note"), ""),
        ])  # fmt: skip
    return table


def advice_tables(report: dict[str, Any]) -> list[Table]:
    return [advice_table(report, k) for k in range(len(report.get("advice") or []))]


def advice_figure(advice: dict[str, Any], index: int) -> dict[str, Any] | None:
    """Horizontal bars: measured speedup per kind of pruning, one bar per batch size."""
    from prunekit.report.figures import COLOURS, _figure, _pyplot

    measured = [r for r in advice["rows"] if r.get("speedup") is not None]
    if not measured:
        return None
    kinds = list(dict.fromkeys(_what(r) for r in measured))
    batches = sorted({r["batch_size"] for r in measured})
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * len(kinds) * len(batches) + 1)))
    height = 0.8 / len(batches)
    for b, batch in enumerate(batches):
        speed = {_what(r): r["speedup"] for r in measured if r["batch_size"] == batch}
        ys = [k + b * height for k in range(len(kinds))]
        ax.barh(ys, [speed.get(kind, 0.0) for kind in kinds], height=height,
                color=COLOURS[b % len(COLOURS)], label=f"batch {batch}")  # fmt: skip
    ax.axvline(1.0, color="#333", lw=1, ls="--")
    ax.set_yticks([k + 0.4 - height / 2 for k in range(len(kinds))])
    ax.set_yticklabels(kinds, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("measured speedup over the dense model (x)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _figure(
        f"advice-{index}", f"What pays on {advice.get('device_name') or advice.get('device')}",
        f"Measured speedup of each kind of pruning over the dense {advice['model']} (dashed: "
        f"no gain). {advice['recommendation'][0].upper()}{advice['recommendation'][1:]}.",
        [advice["file"]], fig,
    )  # fmt: skip


__all__ = ["advice_figure", "advice_table", "advice_tables"]
