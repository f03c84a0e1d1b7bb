"""The report page in a real browser (headless Chromium): no console error, no request of any
kind, not blank, and every number in the headline table equal to report.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _browser import find_chromium, is_blank, load_page
from _reports import make_run
from test_report import check_cells

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        find_chromium() is None,
        reason="chromium not installed (Debian: apt-get install chromium); CI installs it",
    ),
]

HEADLINE_CELLS = """
Array.from(document.querySelectorAll('#headline td[data-json]')).map(td => ({
  'data-json': td.dataset.json, 'data-scale': td.dataset.scale,
  'data-digits': td.dataset.digits, text: td.textContent}))
"""


def test_the_page_in_chromium(tmp_path: Path) -> None:
    from prunekit.cli.main import main

    uniform = make_run(tmp_path / "uniform", final_acc=0.6, macs=(1000, 500))
    planned = make_run(tmp_path / "planned")
    out = tmp_path / "report"
    assert main(["report", str(uniform), str(planned), "--out", str(out),
                 "--cost", "gpu=L4,qps=100", "--cost", "gpu=H100,qps=2000"]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    page = load_page(out / "report.html", evaluate=HEADLINE_CELLS)
    assert page.console_errors == []
    assert page.requests == [] and page.failed_requests == []
    assert not is_blank(page.screenshot_png)
    # 2 runs x (accuracy 2, retention, samples, MACs 3, params 3, bytes 2 (no deployed file
    # in these runs), latency 5, cost 3)
    assert check_cells(page.value, report) == 2 * 20


def test_a_page_that_says_not_measured_renders_too(tmp_path: Path) -> None:
    from prunekit.cli.main import main

    run = make_run(tmp_path / "r", latency=[], sensitivity=False)
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    page = load_page(out / "report.html", evaluate=HEADLINE_CELLS)
    assert page.console_errors == [] and page.requests == []
    assert check_cells(page.value, report) == 12  # the latency and cost cells say so instead
