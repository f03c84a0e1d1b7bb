"""Plain-text tables and human-readable numbers; every number says its unit."""

from __future__ import annotations

from collections.abc import Sequence


def si(value: float, unit: str = "") -> str:
    """3504872 -> '3.50 M'; the decimal prefixes used for MACs and parameter counts."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def nbytes(value: float) -> str:
    """Bytes with decimal prefixes (1 MB = 10^6 bytes, as flash sizes are quoted)."""
    for factor, prefix in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if value >= factor:
            return f"{value / factor:.2f} {prefix}"
    return f"{value:.0f} B"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])
