"""The real-browser harness (tests/_browser.py) can fail: each check catches what it is for.

Every test loads a small HTML file in headless Chromium; one browser serves the module, and the
cleanup tests start their own. Skipped where no Chromium is installed (CI installs Debian's).
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _browser import Browser, BrowserError, find_chromium, is_blank, load_page

pytestmark = [
    pytest.mark.slow,  # a real browser: about 0.5-1.6 s a test, 10 s the file
    pytest.mark.skipif(
        find_chromium() is None,
        reason="chromium not installed (Debian: apt-get install chromium); CI installs it",
    ),
]


def _red_png() -> str:
    """A real 2x2 red PNG as a data: URL: an image that needs no request."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (255, 0, 0)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


RED_PNG = _red_png()
TABLE = """<!doctype html><meta charset="utf-8"><title>t</title>
<h1>Report</h1>
<table>
  <tr><th>layer</th><th>params</th></tr>
  <tr><td style="background:#4a90d9;color:#fff">conv1</td><td>864</td></tr>
  <tr><td style="background:#d94a4a;color:#fff">fc</td><td>5130</td></tr>
</table>
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as started:
        yield started


def page(tmp_path: Path, html: str, name: str = "page.html") -> Path:
    path = tmp_path / name
    path.write_text(html, encoding="utf-8")
    return path


# --- console errors and exceptions ----------------------------------------------------------------


def test_console_error_is_reported(browser: Browser, tmp_path: Path) -> None:
    result = browser.load(page(tmp_path, '<p>x</p><script>console.error("boom")</script>'))
    assert any("boom" in message for message in result.console_errors), result.console_errors


def test_uncaught_exceptions_are_reported_even_late(browser: Browser, tmp_path: Path) -> None:
    html = """<p>x</p>
    <script>throw new Error("kaboom")</script>
    <script>setTimeout(() => { throw new TypeError("later") }, 20)</script>"""
    errors = browser.load(page(tmp_path, html), settle=1).console_errors
    assert any("kaboom" in message for message in errors), errors
    assert any("TypeError: later" in message for message in errors), errors


def test_a_clean_page_reports_nothing(browser: Browser, tmp_path: Path) -> None:
    html = f'{TABLE}<img src="{RED_PNG}" alt="red"><script>console.log("fine")</script>'
    result = browser.load(page(tmp_path, html))
    assert result.console_errors == []
    assert result.requests == []
    assert result.failed_requests == []


# --- requests -------------------------------------------------------------------------------------


def test_every_request_is_reported(browser: Browser, tmp_path: Path) -> None:
    html = """<p>x</p>
    <img src="http://127.0.0.1:9/x.png">
    <link rel="stylesheet" href="https://example.invalid/a.css">
    <img src="beside.png">"""
    result = browser.load(page(tmp_path, html))
    beside = (tmp_path / "beside.png").as_uri()
    assert set(result.requests) == {
        "http://127.0.0.1:9/x.png",
        "https://example.invalid/a.css",
        beside,  # a file next to the page is a request too: the page is not self-contained
    }
    assert set(result.failed_requests) == set(result.requests)  # nothing reaches the network


def test_data_urls_and_the_page_itself_are_not_requests(browser: Browser, tmp_path: Path) -> None:
    html = f'<img src="{RED_PNG}"><style>body {{ background: url("{RED_PNG}") }}</style>'
    result = browser.load(page(tmp_path, html))
    assert result.requests == []
    assert result.url == (tmp_path / "page.html").resolve().as_uri()


# --- screenshots ----------------------------------------------------------------------------------


def test_an_empty_page_is_blank(browser: Browser, tmp_path: Path) -> None:
    for html in ("", "<!doctype html><body style='background:#123'>"):
        assert is_blank(browser.load(page(tmp_path, html)).screenshot_png), html


def test_a_table_with_text_is_not_blank(browser: Browser, tmp_path: Path) -> None:
    assert not is_blank(browser.load(page(tmp_path, TABLE)).screenshot_png)
    assert not is_blank(browser.load(page(tmp_path, "<p>Hi</p>")).screenshot_png)  # one word


def test_the_screenshot_is_the_full_page(browser: Browser, tmp_path: Path) -> None:
    from PIL import Image

    html = '<body style="margin:0"><div style="height:2500px;background:#eee"></div><p>end</p>'
    result = browser.load(page(tmp_path, html), width=800, height=600)
    with Image.open(io.BytesIO(result.screenshot_png)) as image:
        assert image.width == 800
        assert image.height > 2500
        bottom = image.crop((0, 2500, image.width, image.height)).convert("RGB")
    buffer = io.BytesIO()
    bottom.save(buffer, format="PNG")
    assert not is_blank(buffer.getvalue())  # the text below the fold was captured


# --- evaluating JavaScript ------------------------------------------------------------------------


def test_evaluate_returns_the_value(browser: Browser, tmp_path: Path) -> None:
    path = page(tmp_path, TABLE)
    assert browser.load(path, evaluate="document.querySelectorAll('td').length").value == 4
    cells = "[...document.querySelectorAll('td')].map(td => td.textContent)"
    assert browser.load(path, evaluate=cells).value == ["conv1", "864", "fc", "5130"]
    assert browser.load(path).value is None


def test_evaluate_errors_raise(browser: Browser, tmp_path: Path) -> None:
    with pytest.raises(BrowserError, match="no_such_thing"):
        browser.load(page(tmp_path, TABLE), evaluate="no_such_thing.length")


# --- failures and cleanup -------------------------------------------------------------------------


def test_a_missing_file_raises(browser: Browser, tmp_path: Path) -> None:
    with pytest.raises(BrowserError, match="ERR_FILE_NOT_FOUND"):
        browser.load(tmp_path / "nope.html")


def test_load_page_starts_and_removes_its_own_browser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args: Any, **kwargs: Any) -> str:
        made.append(mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    result = load_page(page(tmp_path, TABLE), evaluate="document.title")
    assert result.value == "t"
    assert result.screenshot_png.startswith(b"\x89PNG")
    assert len(made) == 1 and "prunekit-chromium-" in made[0]
    assert not Path(made[0]).exists()


def test_a_page_that_never_loads_times_out_and_everything_is_cleaned_up(tmp_path: Path) -> None:
    path = page(tmp_path, "<script>while (true) {}</script>")
    with Browser() as browser:
        pid, profile = browser.pid, browser.profile_dir
        assert pid is not None and profile is not None and profile.is_dir()
        with pytest.raises(BrowserError, match="no load event after 1 s"):
            browser.load(path, timeout=1)
    assert not profile.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_environment_names_the_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    found = find_chromium()
    assert found is not None
    monkeypatch.setenv("PRUNEKIT_CHROMIUM", found)
    assert find_chromium() == found
    monkeypatch.setenv("PRUNEKIT_CHROMIUM", "/nonexistent/chromium")
    assert find_chromium() is None
    with pytest.raises(BrowserError, match="no Chromium found"):
        Browser()
