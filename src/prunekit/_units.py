"""Byte budgets as users write them: ``1MB``, ``256KB``, ``20000``.

Flash sizes are quoted in binary units (a "1 MB" part holds 1,048,576 bytes), so KB/KiB mean 1024
bytes and MB/MiB 1024**2; a plain number is bytes.
"""

from __future__ import annotations

import re

from prunekit.errors import DeploymentError

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1024,
    "kib": 1024,
    "k": 1024,
    "mb": 1024**2,
    "mib": 1024**2,
    "m": 1024**2,
}


def parse_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise DeploymentError(
            f"cannot parse the byte budget {text!r}: write a number with an optional unit B, KB or "
            "MB (binary: 1KB = 1024 bytes), such as 1MB, 20KB or 17000"
        )
    value = round(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise DeploymentError(f"the byte budget must be positive, got {text!r}")
    return value


def format_bytes(n: float) -> str:
    if n >= 1024**2:
        return f"{n / 1024**2:.2f} MB"
    if n >= 1024:
        return f"{n / 1024:.1f} KB"
    return f"{int(n)} B"
