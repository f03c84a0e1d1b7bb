"""``pk.write_report``: the management report from the outputs of prunekit commands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prunekit.report.costs import CostSpec, cost_spec, parse_cost


def _spec(value: str | Mapping[str, Any] | CostSpec) -> CostSpec:
    if isinstance(value, CostSpec):
        return value
    if isinstance(value, str):
        return parse_cost(value)
    return cost_spec(value)


def write_report(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    cost: Sequence[str | Mapping[str, Any] | CostSpec] = (),
    title: str | None = None,
    names: Sequence[str] | None = None,
    force: bool = False,
    log: Any = None,
) -> dict[str, Any]:
    """Write ``out/report.html``, ``report.json`` and ``report.md`` for ``inputs`` (output
    directories of ``prunekit run``, ``prune``, ``finetune``, ``mcu`` or ``prune --heads``)
    and return the report. ``cost``: one entry per GPU type, each a ``--cost`` string
    (``"gpu=L4,qps=100"``), a mapping of the same keys or a ``CostSpec``."""
    from prunekit._outputs import check_output_dir
    from prunekit.report.build import build_report
    from prunekit.report.build import write_report as write

    target = check_output_dir(out, "prunekit report", force=force, log=log)
    report = build_report(inputs, [_spec(c) for c in cost], title=title, names=names)
    write(report, target, log)
    return report
