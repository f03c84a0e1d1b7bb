"""The test lanes of tests/conftest.py, on a folder of stand-in test files."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each case starts pytest (and torch) afresh

HERE = Path(__file__).resolve().parent
FILES = {
    "test_prune_zoo.py": "def test_zoo():\n    pass\n",
    "test_recovery_extra.py": "def test_train():\n    pass\n",
    "test_distributed.py": "def test_dist():\n    pass\n",
    "test_plain.py": textwrap.dedent(
        """
        import pytest

        def test_fast():
            pass

        @pytest.mark.slow
        def test_slow():
            pass

        def test_onnx():
            backend = "onnxruntime"

        @pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
        def test_backend(backend):
            pass

        @pytest.mark.skipif(True, reason="needs CUDA")
        def test_gpu():
            pass
        """
    ),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lanes")
    shutil.copy(HERE / "conftest.py", path / "conftest.py")
    for name, text in FILES.items():
        (path / name).write_text(text)
    return path


def _collected(folder: Path, *args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-p", "no:xdist", "-c", str(HERE.parent / "pyproject.toml"), "--rootdir", str(folder),
         *args],
        cwd=folder, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode in (0, 5), done.stdout + done.stderr  # 5: nothing collected
    return set(re.findall(r"::(\w+(?:\[\w+\])?)$", done.stdout, flags=re.M))


FAST = {"test_fast", "test_onnx", "test_backend[eager]", "test_backend[onnxruntime]", "test_gpu"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), FAST),
        (("--all-lanes",), FAST | {"test_zoo", "test_train", "test_dist", "test_slow"}),
        (("-m", "zoo"), {"test_zoo"}),
        (("-m", "train"), {"test_train", "test_dist"}),
        (("-m", "dist"), {"test_dist"}),
        (("-m", "onnx"), {"test_onnx", "test_backend[onnxruntime]"}),
        (("-m", "gpu"), {"test_gpu"}),
        (("-m", "not zoo and not train"), FAST | {"test_slow"}),
        (("test_prune_zoo.py",), {"test_zoo"}),  # a file named on the command line runs whole
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_lanes_select(folder: Path, args: tuple[str, ...], expected: set[str]) -> None:
    assert _collected(folder, *args) == expected
