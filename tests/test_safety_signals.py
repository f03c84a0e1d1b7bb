"""Killed runs: SIGTERM is handled like Ctrl-C (cleanup, one line, exit 143); after SIGKILL the
next run removes what was left, says so, and writes a valid output.

Each run is a real ``prunekit`` process. Two kinds of kill: at a fixed, worst moment (the output
fully staged, not yet moved into place: the run is paused there by a wrapper that patches
prunekit's own staging step), and at seeded random moments of the whole run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunekit._outputs import foreign_files

pytestmark = pytest.mark.slow

NET = "import torch\nfrom torch import nn\n\ndef net():\n    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))\n"  # fmt: skip
SHAPE = ["--input-shape", "1,3,32,32"]
COMMANDS = {
    "prune": ["prune", "net.py:net", *SHAPE, "--ratio", "0.5", "--out", "out"],
    "sensitivity": ["sensitivity", "net.py:net", *SHAPE, "--out", "out.json"],
    "mcu": ["mcu", "--dataset", "digits", "--quick", "--flash", "6KB", "--values", "4",
            "--no-distill", "--out", "out"],
}  # fmt: skip
# pauses the run once its output is complete in the staging area, just before it is moved
PAUSE = """
import os, sys, time
import prunekit._outputs as outputs

def paused(*args, **kwargs):
    result = original(*args, **kwargs)
    open(os.environ["PRUNEKIT_TEST_READY"], "w").close()
    time.sleep(300)
    return result

original = outputs.{hook}
outputs.{hook} = paused
from prunekit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""
HOOKS = {"prune": "write_record", "mcu": "write_record", "sensitivity": "open_permissions"}


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PRUNEKIT_TEST_READY": str(tmp / "READY")}


def _start(work: Path, argv: list[str], hook: str | None = None) -> subprocess.Popen[str]:
    code = PAUSE.format(hook=hook) if hook else "import sys; from prunekit.cli.main import main; sys.exit(main(sys.argv[1:]))"  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", code, *argv], cwd=work, env=_env(work.parent),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _run(work: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    code = "import sys; from prunekit.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=work, env=_env(work.parent),
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def _debris(work: Path) -> list[str]:
    return sorted(p.name for p in work.iterdir() if ".prunekit-" in p.name)


_CLEAN: dict[str, dict[str, object]] = {}


def _clean_sensitivity(tmp: Path) -> dict[str, object]:
    """The groups of an uninterrupted sensitivity run (computed once)."""
    if not _CLEAN:
        clean = tmp / "clean"
        clean.mkdir()
        (clean / "net.py").write_text(NET)
        assert _run(clean, COMMANDS["sensitivity"]).returncode == 0
        _CLEAN.update(json.loads((clean / "out.json").read_text())["groups"])
    return _CLEAN


def _check_output(work: Path, command: str) -> None:
    """The output is complete and valid, and nothing was left beside it."""
    assert _debris(work) == []
    if command == "sensitivity":  # resumed: the same curves as a run never interrupted
        data = json.loads((work / "out.json").read_text())
        assert data["groups"] == _clean_sensitivity(work.parent)
        return
    assert foreign_files(work / "out", f"prunekit {command}") == []  # every file as recorded
    if command == "prune":
        from prunekit.artifact import load

        model, _ = load(work / "out", trust_code=True, say=lambda _: None)
        import torch

        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    else:
        report = json.loads((work / "out" / "report.json").read_text())
        assert report["c_check"]["agreement"] in (1.0, None)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "net.py").write_text(NET)
    return work


def _paused(work: Path, command: str) -> subprocess.Popen[str]:
    process = _start(work, COMMANDS[command], HOOKS[command])
    ready = work.parent / "READY"
    deadline = time.monotonic() + 540
    while not ready.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before its output was staged: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the run never reached its staging step")
        time.sleep(0.05)
    return process


@pytest.mark.parametrize("command", ["prune", "sensitivity", "mcu"])
def test_sigterm_cleans_up_says_so_and_exits_143(work: Path, command: str) -> None:
    process = _paused(work, command)
    assert _debris(work), "the staged output exists while the run is paused"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == (
        f"prunekit {command}: terminated (SIGTERM); nothing half-written was left"
    )
    assert _debris(work) == [] and not (work / "out").exists()


@pytest.mark.parametrize("command", ["prune", "sensitivity", "mcu"])
def test_a_rerun_after_sigkill_removes_the_debris_and_says_so(work: Path, command: str) -> None:
    process = _paused(work, command)
    process.kill()
    process.communicate(timeout=60)
    left = _debris(work)
    assert left, "SIGKILL leaves the staged output behind"
    rerun = _run(work, COMMANDS[command])
    assert rerun.returncode == 0, rerun.stderr
    assert "removed what an interrupted run left" in rerun.stderr and left[0] in rerun.stderr
    _check_output(work, command)


@pytest.mark.parametrize(
    ("command", "sig", "seed"),
    [("prune", signal.SIGKILL, 0), ("prune", signal.SIGTERM, 1),
     ("sensitivity", signal.SIGKILL, 2), ("sensitivity", signal.SIGTERM, 3),
     ("mcu", signal.SIGKILL, 4)],
)  # fmt: skip
def test_kill_at_a_random_moment_then_rerun(work: Path, command: str, sig: int, seed: int) -> None:
    rng = random.Random(seed)
    process = _start(work, COMMANDS[command])
    time.sleep(rng.uniform(0.5, 6.0))
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert "Traceback" not in err and "internal error" not in err, err
    if sig == signal.SIGTERM and process.returncode != 0:
        assert process.returncode == 143 and _debris(work) == [], err
    force = ["--force"] if command != "sensitivity" and (work / "out").exists() else []
    rerun = _run(work, [*COMMANDS[command], *force])
    assert rerun.returncode == 0, rerun.stderr
    _check_output(work, command)


# A SIGTERM whose handler runs inside a weakref callback (importlib's module locks have one, so
# it happens when the signal lands during an import) raises where Python can only print
# "Exception ignored". The run must still end as terminated, without a traceback.
SIGNAL_IN_CALLBACK = """
import signal, sys, time, weakref
from prunekit.cli.main import Terminated, _sigterm_as_interrupt

class Thing:
    pass

def callback(ref):
    signal.raise_signal(signal.SIGTERM)  # the handler runs here, inside the callback
    for _ in range(1000):  # bytecodes for the handler to run on
        pass

with _sigterm_as_interrupt():
    try:
        thing = Thing()
        ref = weakref.ref(thing, callback)
        del thing
        time.sleep(10)
    except Terminated:
        print("terminated")
        sys.exit(143)
print("ran on")
"""


def test_a_sigterm_inside_a_weakref_callback_is_not_lost(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", SIGNAL_IN_CALLBACK], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 143 and result.stdout.strip() == "terminated", result
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result
