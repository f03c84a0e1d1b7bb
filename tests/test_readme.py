"""The README's Python examples run and print what their comments say."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_blocks())))
def test_python_example_runs_and_prints_what_it_promises(
    index: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    block = _blocks()[index]
    expected = re.findall(r"^print\(.*\)\s+# (.+)$", block, flags=re.M)
    assert expected, "each README example promises its output in a comment"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # examples may write files
    try:
        exec(compile(block, f"README.md example {index + 1}", "exec"), {})
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out.splitlines()
    assert printed[: len(expected)] == expected


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in ci.splitlines()
