"""``prunekit report``: figures worked out by hand from fixed inputs, every printed number
traceable to report.json, the same tables in Markdown, side-by-side comparison, and bad input
refused in one line (or said in the page) without writing anything."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from _reports import make_run


class _Cells(HTMLParser):
    """Every ``<td data-json=...>``: its attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, Any]] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self._open: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "td" and "data-json" in a:
            self._open = {**a, "text": ""}
        if tag in ("img", "script", "iframe") and a.get("src"):
            self.images.append(str(a["src"]))
        if tag == "link" and a.get("href"):
            self.links.append(str(a["href"]))
        if tag == "script":
            self.images.append("<script>")

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._open is not None:
            self.cells.append(self._open)
            self._open = None


def json_at(report: dict[str, Any], path: str) -> Any:
    value: Any = report
    for part in path.split("/"):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def shown_number(text: str) -> float:
    match = re.search(r"-?\$?-?[\d,]+(\.\d+)?", text)
    assert match, text
    return float(match.group(0).replace(",", "").replace("$", ""))


def check_cells(cells: list[dict[str, Any]], report: dict[str, Any]) -> int:
    """Each cell's text is its report.json value, scaled and rounded as the cell says."""
    for cell in cells:
        value = json_at(report, cell["data-json"])
        scale, digits = float(cell["data-scale"]), int(cell["data-digits"])
        assert shown_number(cell["text"]) == round(value * scale, digits), cell
    return len(cells)


def _report(tmp_path: Path, *inputs: Path, args: tuple[str, ...] = ()) -> dict[str, Any]:
    from prunekit.cli.main import main

    out = tmp_path / "report"
    assert main(["report", *map(str, inputs), "--out", str(out), *args]) == 0
    return json.loads((out / "report.json").read_text())


def test_retention_cuts_speedup_and_cost_from_fixed_inputs(tmp_path: Path) -> None:
    run = make_run(tmp_path / "planned")
    report = _report(tmp_path, run, args=("--cost", "gpu=L4,price=0.805,qps=100,utilization=0.6"))
    (r,) = report["runs"]
    assert r["name"] == "planned" and r["kind"] == "run"
    assert r["accuracy"] == {"metric": "top1", "dense": 0.8, "final": 0.72, "split": "eval",
                             "samples": 1000, "split_from": "the test split", "data": "digits"}  # fmt: skip
    assert r["retention"] == pytest.approx(0.9)
    assert r["macs"] == {"dense": 1000, "final": 400, "reduction": pytest.approx(0.6)}
    assert r["params"] == {"dense": 500, "final": 250, "reduction": 0.5}
    assert r["bytes"]["float32"] == {"dense": 2000, "final": 1000}
    assert r["bytes"]["int8"] == {"dense": 500, "final": 250}
    b1, b32 = r["latency"]
    assert (b1["dense_ms"], b1["final_ms"], b1["saved_ms"], b1["speedup"]) == (4.0, 2.5, 1.5, 1.6)
    assert b1["ideal"] == 2.5 and b1["of_ideal"] == pytest.approx(0.64)
    assert b32["dense_throughput"] == 800.0 and b32["final_throughput"] == 1600.0
    cost = r["cost"]
    assert {k: cost[k] for k in ("gpu", "price_per_hour", "qps", "utilization", "batch_size")} == {
        "gpu": "L4",
        "price_per_hour": 0.805,
        "qps": 100.0,
        "utilization": 0.6,
        "batch_size": 1,
    }
    assert round(cost["annual_dense"], 2) == 4701.20 and round(cost["annual_final"], 2) == 2938.25
    assert cost["gpus_dense"] == cost["gpus_final"] == 1
    assert cost["scaled_from"]["device"] == "cpu"  # measured on a CPU, priced on an L4
    # every figure names its file
    assert r["files"]["accuracy"].endswith("evaluate/evaluate.json")
    assert r["files"]["latency"].endswith("verify/verify.json")
    assert {f["id"] for f in report["figures"]} >= {
        "tradeoff",
        "latency",
        "widths",
        "sensitivity-0",
    }


def test_every_number_on_the_page_is_the_one_in_report_json(tmp_path: Path) -> None:
    run = make_run(tmp_path / "planned")
    report = _report(tmp_path, run, args=("--cost", "gpu=L4,qps=100", "--cost", "gpu=A100,qps=900"))
    html = (tmp_path / "report" / "report.html").read_text()
    parser = _Cells()
    parser.feed(html)
    assert check_cells(parser.cells, report) > 60
    headline = re.search(r'<table id="headline".*?</table>', html, re.S)
    assert headline and headline.group(0).count("data-json") >= 20
    # one self-contained file: images inline, nothing fetched, no script
    assert parser.images and all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert parser.links == ["data:,"]
    for name in ("A100", "L4", "total", "price per GPU-hour", "hours per year", "utilisation"):
        assert name in html
    assert price_date() in html


def price_date() -> str:
    from prunekit.report.costs import price_table

    return str(price_table()["as_of"])


def test_markdown_carries_the_same_tables(tmp_path: Path) -> None:
    run = make_run(tmp_path / "planned")
    _report(tmp_path, run)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| retention (final / dense) | 90.00 % |" in md
    assert "| MACs cut | 60.0 % |" in md
    assert "| speedup, measured | 1.60x |" in md
    assert "### Projected annual GPU cost" in md and "![Latency and accuracy" in md
    assert (tmp_path / "report" / "figures" / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"


def test_several_runs_side_by_side(tmp_path: Path) -> None:
    uniform = make_run(tmp_path / "a" / "uniform", final_acc=0.6, macs=(1000, 500))
    planned = make_run(tmp_path / "b" / "planned", macs=(1000, 400))
    report = _report(tmp_path, uniform, planned, args=("--name", "uniform", "--name", "plan"))
    assert [r["name"] for r in report["runs"]] == ["uniform", "plan"]
    assert [r["retention"] for r in report["runs"]] == [pytest.approx(0.75), pytest.approx(0.9)]
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<th>uniform</th><th>plan</th>" in html
    assert 'data-json="runs/1/retention"' in html


def test_two_inputs_with_one_name_keep_both(tmp_path: Path) -> None:
    report = _report(tmp_path, make_run(tmp_path / "x" / "run"), make_run(tmp_path / "y" / "run"))
    assert [r["name"] for r in report["runs"]] == ["run", "y/run"]


def test_unmeasured_latency_is_said_not_invented(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", latency=[])
    report = _report(tmp_path, run)
    (r,) = report["runs"]
    assert r["latency"] == [] and r["cost"]["annual_dense"] is None
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Latency not measured by any input" in html
    assert re.search(r"<td>speedup, measured</td><td class=\"na\">not measured</td>",
                     html.replace('<tr class="key">', "<tr>"))  # fmt: skip


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    result = cli("report", str(empty), "--out", str(out))
    assert result.code == 1 and "holds no prunekit output: looked for run.json" in result.err
    result = cli("report", str(tmp_path / "nope"), "--out", str(out))
    assert result.code == 1 and "no such directory" in result.err
    a = make_run(tmp_path / "a", macs=(1000, 400))
    b = make_run(tmp_path / "b", macs=(2000, 400), model="pkg.mod:Other")
    result = cli("report", str(a), str(b), "--out", str(out))
    assert result.code == 1 and "prune different models" in result.err
    assert "1,000 MACs" in result.err and "2,000 MACs" in result.err
    for spec, message in (("gpu=V100", "no price for GPU 'V100'"),
                          ("gpu=L4,price=-0.8", "price must be a positive number"),
                          ("gpu=L4,batch_size=8", "batch_size=8 was not measured"),
                          ("gpu=L4,qps=100,qps=1", "key 'qps' is given twice")):  # fmt: skip
        result = cli("report", str(a), "--out", str(out), "--cost", spec)
        assert result.code == 1 and message in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1
    (a / "run.json").write_text('{"my": "log"}')  # any JSON named run.json is no run
    result = cli("report", str(a), "--out", str(out))
    assert result.code == 1 and "run.json is not a prunekit run record" in result.err
    (a / "run.json").write_text("{not json")
    result = cli("report", str(a), "--out", str(out))
    assert result.code == 1 and "run.json is not valid JSON" in result.err
    assert not out.exists()


def test_a_reused_run_directory_s_old_step_outputs_are_not_read(tmp_path: Path) -> None:
    """A rerun whose recipe dropped evaluate and verify leaves their old outputs in the
    directory: the report reads only the steps of the run that wrote run.json."""
    run = make_run(tmp_path / "r")
    record = json.loads((run / "run.json").read_text())
    record["recipe"]["steps"] = ["prune"]
    record["final"]["accuracy"] = None
    (run / "run.json").write_text(json.dumps(record))
    (r,) = _report(tmp_path, run)["runs"]
    assert r["accuracy"]["final"] is None and r["latency"] == []
    assert "evaluate" not in json.dumps(r["files"]) and "verify" not in json.dumps(r["files"])


def test_the_report_never_replaces_files_it_did_not_write(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "r")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = cli("report", str(run), "--out", str(out), "--force")
    assert result.code == 1 and "notes.txt" in result.err
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert cli("report", str(run), "--out", str(out)).code == 0
    assert cli("report", str(run), "--out", str(out)).code == 1  # exists: needs --force
    assert cli("report", str(run), "--out", str(out), "--force").code == 0


def test_python_verb(tmp_path: Path) -> None:
    import prunekit as pk

    report = pk.write_report([make_run(tmp_path / "r")], tmp_path / "out",
                             cost=[{"gpu": "T4", "qps": 10}])  # fmt: skip
    assert report["runs"][0]["cost"]["gpu"] == "T4"
    assert (tmp_path / "out" / "report.html").is_file()
