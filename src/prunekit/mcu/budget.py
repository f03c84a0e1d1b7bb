"""Byte budgets ("6KB", "1.5MiB"): moved to the ground floor (``prunekit._units``), where the
planner's ``bytes=`` targets and the microcontroller path both read them."""

from prunekit._units import format_bytes, parse_bytes

__all__ = ["format_bytes", "parse_bytes"]
