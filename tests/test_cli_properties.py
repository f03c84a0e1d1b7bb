"""Property tests over each command's arguments: whatever a user types, the command exits 0 or
1, never shows a traceback or calls a user mistake an "internal error", and creates or changes
nothing outside its --out (every file around it is compared byte for byte before and after).

Arguments are drawn from pools mixing valid values with the mistakes users make: typos,
out-of-range numbers, NaN, paths that are files, directories, the working directory, a parent.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunekit.cli.main import main

pytestmark = pytest.mark.slow

NET = "import torch\nfrom torch import nn\n\nNOT_CALLABLE = 3\n\ndef net(width=8):\n    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))\n"  # fmt: skip

# every pool: (valid values, the mistakes users make)
Pool = tuple[list[str], list[str]]
MODEL: Pool = (["net.py:net"], ["net.py:missing", "nope.py:net", "net.py:NOT_CALLABLE", "net.py",
                                "no_such_model_xyz", "user-dir", "", "os:system", "notes.txt"])  # fmt: skip
DIR_OUT: Pool = (["out", "sub/out"], [".", "..", "notes.txt", "user-dir", "notes.txt/x", "", "~"])
FILE_OUT: Pool = (["o.json", "sub/o.json"],
                  [".", "..", "notes.txt", "user-dir", "notes.txt/x", "", "~"])  # fmt: skip
COMMON: dict[str, Pool] = {
    "--input-shape": (["1,3,16,16", "2,3,12,12"], ["1,3,0,16", "x", "1,3,16", "-1,3,16,16", ""]),
    "--seed": (["0", "1"], ["x", "1.5"]),
    "--model-kwargs": (['{"width": 4}'], ["{not json", "[1]", '{"nope": 1}']),
    "--weights": ([], ["DEFAULT", "NOPE"]),
    "--seq-len": (["8"], ["0", "x"]),
}
PATTERNS: Pool = (["0", "re:2"], ["re:((", "layer[", "zzz", "re:9"])
OPTIONS: dict[str, dict[str, Pool]] = {
    "analyze": {**COMMON, "--top": (["3", "0"], ["-1", "x"])},
    "bench": {**COMMON, "--batch-sizes": (["1", "1,2"], ["0", "x", "1,,2"]),
              "--threads": (["1", "2"], ["0", "x"]), "--min-repeats": (["2"], ["0", "-5"]),
              "--target-ci": (["0.5"], ["0", "nan", "-1", "inf"]),
              "--backend": (["eager"], ["nope"]), "--device": (["cpu"], ["tpu"])},
    "prune": {**COMMON, "--ratio": (["0.5", "0.25"], ["1.5", "-0.1", "nan", "x", "1"]),
              "--round-to": (["1", "4", "16"], ["0", "-3", "x"]), "--ignore": PATTERNS,
              "--importance": (["l1", "l2", "random"], ["nope"]),
              "--target": ([], ["macs=0", "flops=0.5", "macs=x"]),
              "--plan": ([], [".", "notes.txt", "missing.json"]),
              # no --plan is ever drawn, and --calibration applies to --plan only
              "--calibration": ([], ["missing-dir", "notes.txt", "imgs"])},
    "sensitivity": {**COMMON, "--ratios": (["0.5", "0.3,0.6"], ["0", "1.5", "x", ""]),
                    "--metric": (["kl"], ["nope", "top1"]), "--samples": (["4"], ["0", "-1"]),
                    "--batch-size": (["2"], ["0"]),
                    "--data": (["imgs"], ["missing-dir", "notes.txt", "user-dir"]),
                    "--plot": (["c.png"], ["c.pdf", "notes.txt", "notes.txt/c.png", "user-dir"])},
    "profile": {**COMMON, "--fractions": (["1,0.5"], ["1,1.5", "x", "0"]),
                "--round-to": (["1", "2"], ["0", "x"]), "--threads": (["1"], ["0"]),
                "--min-time": (["0"], ["-1", "nan"]), "--max-time": (["0.02"], ["0", "nan", "inf"]),
                "--batch-size": (["1"], ["0"]), "--backend": (["eager"], ["nope"])},
    "plan": {**COMMON, "--target": (["macs=0.8", "params=0.9"], ["macs=0", "nope=1", "bytes=lots"]),
             "--sensitivity": (["s.json"], ["missing.json", "notes.txt", "."]),
             "--protect": PATTERNS, "--round-to": (["1", "2"], ["0", "x"]),
             "--latency-weight": (["0"], ["nan", "-1"]), "--lut": ([], ["missing.json", "notes.txt"])},
}  # fmt: skip
FLAGS = {"prune": ["--force", "--json", "--trust-code"], "plan": ["--force"],
         "profile": ["--force"], "sensitivity": ["--force", "--no-blocks"],
         "bench": ["--json", "--channels-last"], "analyze": ["--json"]}  # fmt: skip
# options every valid line has (unless one is the mistake drawn)
REQUIRED = {"prune": ["--ratio"], "plan": ["--target", "--sensitivity"], "profile": [],
            "sensitivity": [], "bench": [], "analyze": []}  # fmt: skip
OUT: dict[str, Pool] = {"prune": DIR_OUT, "sensitivity": FILE_OUT, "profile": FILE_OUT,
                        "plan": FILE_OUT}  # fmt: skip
FAST_TIMING = ["--min-time", "0", "--max-time", "0.02", "--min-repeats", "2"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A user's working directory: their model file, notes, a folder of their own, a plan and
    a sensitivity file made for the model."""
    root = tmp_path_factory.mktemp("template") / "home" / "work"
    root.mkdir(parents=True)
    (root / "net.py").write_text(NET)
    (root / "notes.txt").write_text("the user's notes\n")
    (root.parent / "notes.txt").write_text("notes one level up\n")
    (root / "user-dir").mkdir()
    (root / "user-dir" / "data.csv").write_text("a,b\n")
    from PIL import Image

    for c in range(2):  # an image folder, given by a relative path
        (root / "imgs" / f"class{c}").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (60 * i, 120 * c, 9)).save(
                root / "imgs" / f"class{c}" / f"{i}.png"
            )
    with _cwd(root):
        shape = ["--input-shape", "1,3,16,16"]
        assert (
            _main(["sensitivity", "net.py:net", *shape, "--ratios", "0.5", "--out", "s.json"])[0]
            == 0
        )
        assert _main(["plan", "net.py:net", *shape, "--target", "macs=0.8", "--sensitivity",
                      "s.json", "--out", "p.json"])[0] == 0  # fmt: skip
    # matplotlib keeps its font cache under $HOME/.cache unless told otherwise: a library's
    # cache, not an output of prunekit's, so it lives beside the snapshots
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("matplotlib")))
        yield root


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _snapshot(root: Path, skip: list[Path]) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skip):
            continue
        if path.is_file():
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[str(path.relative_to(root)) + "/"] = "dir"
    return found


@st.composite
def command_lines(draw: st.DrawFn, command: str) -> list[str]:
    """A command line with 0, 1 or 2 mistakes (about a third have none and must succeed)."""
    options = OPTIONS[command]
    fields = ["MODEL", "--input-shape", *(["--out"] if command in OUT else []), *options]
    can_go_wrong = [f for f in fields if f in ("MODEL", "--out") or options[f][1]]
    count = draw(st.sampled_from([0, 0, 1, 1, 2]))
    wrong = draw(st.lists(st.sampled_from(can_go_wrong), min_size=count, max_size=count,
                          unique=True))  # fmt: skip
    optional = [f for f in options if options[f][0] and f not in REQUIRED[command]]
    chosen = draw(st.lists(st.sampled_from(optional), max_size=3, unique=True))
    pools = {"MODEL": MODEL, "--out": OUT.get(command, MODEL), **options}

    def value(field: str) -> str:
        valid, invalid = pools[field]
        return draw(st.sampled_from(invalid if field in wrong else valid))

    argv = [command, value("MODEL")]
    for field in dict.fromkeys(["--input-shape", *REQUIRED[command], *chosen, *wrong]):
        if field not in ("MODEL", "--out"):
            argv += [field, value(field)]
    argv += draw(st.lists(st.sampled_from(FLAGS[command]), max_size=2, unique=True))
    if command in OUT:
        argv += ["--out", value("--out")]
    if command in ("bench", "profile"):
        argv += FAST_TIMING if command == "bench" else ["--quick"]
    return argv


def _check(template: Path, argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` in a fresh copy of the user's directory and check the properties; returns
    the exit status and stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        shutil.copytree(template.parent, home)
        work = home / "work"
        outputs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--out", "--plot")]
        # a new output may appear; anything that existed before (the user's) must not change
        skip = [p for o in outputs if not (p := (work / o).resolve()).exists() and o.strip()]
        before = _snapshot(home, skip)
        previous_home = os.environ.get("HOME")
        os.environ["HOME"] = str(home)

        try:
            with _cwd(work):
                code, _stdout, stderr = _main(argv)
        finally:
            if previous_home is not None:
                os.environ["HOME"] = previous_home
        assert code in (0, 1), (argv, code, stderr)
        assert "Traceback" not in stderr and "internal error" not in stderr, (argv, stderr)
        if code == 1:  # one line, unless progress lines came before the error
            assert stderr.strip().splitlines()[-1].startswith("prunekit"), (argv, stderr)
        after = _snapshot(home, skip)
        for written in skip if code == 0 else []:  # it may create the directories outputs are in
            for parent in written.parents:
                key = str(parent.relative_to(home)) + "/" if home in parent.parents else ""
                if key and key not in before:
                    after.pop(key, None)
        assert after == before, argv
        return code, stderr


PROPERTY = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])  # fmt: skip


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_any_command_line_exits_cleanly_and_touches_nothing_else(
    template: Path, command: str
) -> None:
    @PROPERTY
    @given(argv=command_lines(command))
    def check(argv: list[str]) -> None:
        _check(template, argv)

    check()


# mcu and demo train for a minute when everything is valid: each line here has at least one
# mistake, which must be caught before the training starts (the run returns at once)
MCU_OPTIONS = {
    "--flash": (["6KB", "1MB"], ["lots", "20", "0", "-1KB"]),
    "--arch": (["64-32-10"], ["64-x-10", "784-300-10", "64-0-10"]),
    "--values": (["8,4", "4"], ["9", "0", "x", ""]),
    "--out": (["out"], [".", "..", "~", "notes.txt", "user-dir", "notes.txt/x", ""]),
    "--data-dir": (["user-dir"], ["missing-dir"]),
}


@st.composite
def broken_mcu_lines(draw: st.DrawFn, command: str) -> list[str]:
    options = {k: v for k, v in MCU_OPTIONS.items() if command == "mcu" or k != "--arch"}
    options.pop("--data-dir")
    broken = draw(st.sampled_from(sorted(options)))
    argv = [command]
    if command == "mcu":
        argv += ["--dataset", "digits", "--quick"]
    for option, (valid, invalid) in options.items():
        if option == broken:
            argv += [option, draw(st.sampled_from(invalid))]
        elif draw(st.booleans()) or (option == "--out" and command == "mcu"):
            argv += [option, draw(st.sampled_from(valid))]
    return argv + draw(st.lists(st.sampled_from(["--force", "--json", "--no-distill"]),
                                max_size=2, unique=True))  # fmt: skip


@pytest.mark.parametrize("command", ["mcu", "demo"])
def test_mcu_and_demo_mistakes_are_caught_before_training(template: Path, command: str) -> None:
    @PROPERTY
    @given(argv=broken_mcu_lines(command))
    def check(argv: list[str]) -> None:
        code, stderr = _check(template, argv)
        assert code == 1 and len(stderr.strip().splitlines()) == 1, (argv, stderr)

    check()
