"""``report.html``: one static file, readable on screen and printed, with no request of any kind.

No script, no web font, no stylesheet link: the CSS is inline and every figure is a PNG data
URI, so the page opens offline and a mail attachment of it is the whole report.
"""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from prunekit.report.tables import Cell, Table, all_tables

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1a1a1a; max-width: 1150px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h3 { font-size: 1em; margin: 1.1em 0 .2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
.meta { color: #555; font-size: .9em; }
table { border-collapse: collapse; margin: .6em 0 .3em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d0d0; padding: .25em .6em; text-align: right; }
th { background: #f1f3f5; } td:first-child, th:first-child { text-align: left; }
td.na { color: #888; font-style: italic; }
table.headline td { min-width: 9em; } table.headline tr.key td { font-weight: 600; }
caption { caption-side: bottom; text-align: left; color: #555; font-size: .85em; padding-top: .3em; }
figure { margin: 1.2em 0; page-break-inside: avoid; }
figure img { max-width: 100%; border: 1px solid #e3e3e3; }
figcaption { color: #444; font-size: .9em; max-width: 900px; }
.notes li { color: #664d03; }
.sources { font-size: .8em; color: #666; }
@media print { body { margin: 0; max-width: none; font-size: 11px; }
  h2 { page-break-after: avoid; } table, figure { page-break-inside: avoid; } }
"""

NO_LATENCY = (
    '<p class="na">Latency not measured by any input: no speedup and no cost figure is shown '
    "(measure it with `prunekit run` and a verify step, or `prunekit prune --verify`).</p>"
)
KEY_ROWS = {"retention (final / dense)", "MACs cut", "speedup, measured", "annual saving"}


def _cell(cell: Cell) -> str:
    attrs = ""
    if cell.path is not None:
        attrs = (f' data-json="{escape(cell.path)}" data-scale="{cell.scale:g}" '
                 f'data-digits="{cell.digits}"')  # fmt: skip
    cls = ' class="na"' if cell.muted else ""
    return f"<td{cls}{attrs}>{escape(cell.text)}</td>"


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.header)
    rows = []
    for row in table.rows:
        key = ' class="key"' if table.id == "headline" and row[0].text in KEY_ROWS else ""
        rows.append(f"<tr{key}>" + "".join(_cell(c) for c in row) + "</tr>")
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    cls = ' class="headline"' if table.id == "headline" else ""
    title = "" if table.id == "headline" else f"<h3>{escape(table.title)}</h3>"
    return (f'{title}<table id="{escape(table.id)}"{cls}>{caption}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")  # fmt: skip


def _notes(report: dict[str, Any]) -> str:
    items = [f"<li><b>{escape(r['name'])}</b>: {escape(n)}</li>"
             for r in report["runs"] for n in r.get("notes", [])]  # fmt: skip
    if report["cost_assumptions"].get("defaulted"):
        items.append("<li>No --cost given: the cost uses default assumptions (L4, 100 QPS, "
                     "60% utilisation); state yours with --cost or --cost-file.</li>")  # fmt: skip
    for r in report["runs"]:
        for cost in r["cost_by_gpu"]:
            if cost.get("scaled_from"):
                items.append(f"<li><b>{escape(r['name'])}</b>, {escape(cost['gpu'])}: the cost is "
                             f"scaled from a measurement elsewhere: "
                             f"{escape(cost['scaled_from']['method'])}</li>")  # fmt: skip
    return f'<ul class="notes">{"".join(items)}</ul>' if items else ""


def _figure(figure: dict[str, Any]) -> str:
    data = base64.b64encode(figure["png"]).decode("ascii")
    sources = ", ".join(escape(s) for s in figure["sources"])
    return (f'<figure id="{escape(figure["id"])}"><img alt="{escape(figure["title"])}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{escape(figure["title"])}.'
            f"</b> {escape(figure['caption'])} <span class=\"sources\">Drawn from {sources}."
            "</span></figcaption></figure>")  # fmt: skip


def render_html(report: dict[str, Any], figures: list[dict[str, Any]]) -> str:
    tables = {t.id: t for t in all_tables(report)}
    runs = report["runs"]
    inputs = [*runs, *(report.get("advice") or [])]
    parts = [
        f"<h1>{escape(report['title'])}</h1>",
        f'<p class="meta">Generated {escape(report["generated"])} by prunekit '
        f"{escape(report['prunekit'])} from {len(inputs)} input"
        f"{'s' if len(inputs) > 1 else ''}: "
        + ", ".join(f"<code>{escape(r['path'])}</code> ({escape(r['kind'])})" for r in inputs)
        + ".</p>",
    ]  # fmt: skip
    if "headline" in tables:
        parts.append(_table(tables.pop("headline")))
    parts.append(_notes(report))
    sections = (("Latency", "latency-"), ("Cost projection", "cost"), ("Sizes", "bytes"),
                ("What pays on the target, measured", "advice-"), ("Microcontroller", "mcu"),
                ("Sparsity", "sparsity-"))  # fmt: skip
    for title, prefix in sections:
        chosen = [t for tid, t in tables.items() if tid.startswith(prefix)]
        if prefix == "latency-" and not chosen and runs:
            parts.append(f"<h2>{title}</h2>{NO_LATENCY}")
        if chosen:
            parts.append(f"<h2>{escape(title)}</h2>")
            parts.extend(_table(t) for t in chosen)
    if figures:
        parts.append("<h2>Figures</h2>")
        parts.extend(_figure(f) for f in figures)
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{escape(report['title'])}</title><style>{CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
