"""``report.md``: the page's tables as Markdown, for pasting into a ticket or a pull request."""

from __future__ import annotations

from typing import Any

from prunekit.report.tables import Table, all_tables


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(table: Table) -> str:
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(_escape(h) or " " for h in table.header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(table.header) - 1)) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_escape(c.text) for c in row) + " |")
    if table.caption:
        lines += ["", f"_{_escape(table.caption)}_"]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    parts = [f"# {report['title']}", "",
             f"Generated {report['generated']} by prunekit {report['prunekit']} from: "
             + ", ".join(f"`{r['path']}` ({r['kind']})"
                         for r in [*report["runs"], *(report.get("advice") or [])]) + "."]  # fmt: skip
    notes = [f"- **{r['name']}**: {n}" for r in report["runs"] for n in r.get("notes", [])]
    for r in report["runs"]:
        notes += [f"- **{r['name']}**, {c['gpu']}: cost scaled: {c['scaled_from']['method']}"
                  for c in r["cost_by_gpu"] if c.get("scaled_from")]  # fmt: skip
    parts += [_table(t) for t in all_tables(report)]
    if notes:
        parts += ["### Notes", "", *notes]
    figures = report.get("figures") or []
    if figures:
        parts.append("### Figures")
        parts += [f"![{f['title']}]({f['file']})\n\n_{f['caption']}_" for f in figures]
    return "\n\n".join(parts) + "\n"
