"""``prunekit run RECIPE.yaml``: every step's outputs, run.json, skipping finished steps,
and recipes that cannot work refused in one line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RECIPE = """\
model: prunekit.nn.mobile_cnn:MobileCNN
model_kwargs: {width: 0.25}
input_shape: 1,1,8,8
data: digits
task: classification
target: macs=0.6
steps: [baseline, sensitivity, plan, prune, verify, evaluate]
sensitivity: {samples: 8, ratios: [0.5], blocks: false}
plan: {round_to: 4}
verify: {batch_sizes: [1], threads: 1, rounds: 1}
"""


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prunekit.cli.main import main

    root = tmp_path_factory.mktemp("run")
    recipe = _write(root, RECIPE)
    assert main(["run", recipe, "--out", str(root / "out")]) == 0
    return root


def test_every_step_writes_its_directory_and_run_json_summarises(finished_run: Path) -> None:
    out = finished_run / "out"
    for step, files in {
        "baseline": ["baseline.json"],
        "sensitivity": ["sensitivity.json"],
        "plan": ["plan.json"],
        "prune": ["prunekit.json", "model.safetensors", "prune.json"],
        "verify": ["verify.json"],
        "evaluate": ["evaluate.json"],
    }.items():
        for name in files:
            assert (out / step / name).is_file(), f"{step}/{name}"
    run = json.loads((out / "run.json").read_text())
    plan = json.loads((out / "plan" / "plan.json").read_text())
    evaluation = json.loads((out / "evaluate" / "evaluate.json").read_text())
    assert run["final"]["macs"] / run["dense"]["macs"] == pytest.approx(
        plan["achieved"]["macs_fraction"], rel=1e-6
    )
    assert run["final"]["accuracy"] == evaluation["final"]["top1"]
    assert run["retention"] == pytest.approx(run["final"]["accuracy"] / run["dense"]["accuracy"])
    assert run["data"]["eval_samples"] == 450 == evaluation["final"]["samples"]
    assert [r["batch_size"] for r in run["latency"]] == [1]
    assert run["latency"][0]["speedup"] > 0
    assert run["files"]["prune"] == [
        "prune/model.safetensors",
        "prune/prune.json",
        "prune/prunekit.json",
    ]


def test_the_pruned_step_is_an_artifact_every_command_accepts(finished_run: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("evaluate", str(finished_run / "out" / "prune"), "--data", "digits", "--json")
    assert result.code == 0, result.err
    evaluation = json.loads((finished_run / "out" / "evaluate" / "evaluate.json").read_text())
    assert result.json()["top1"] == evaluation["final"]["top1"]


def test_a_rerun_skips_unchanged_steps_and_redoes_changed_ones(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    recipe = _write(
        tmp_path,
        RECIPE.replace(
            "steps: [baseline, sensitivity, plan, prune, verify, evaluate]",
            "steps: [baseline, prune, evaluate]",
        ),
    )
    out = str(tmp_path / "out")
    first = cli("run", recipe, "--out", out)
    assert first.code == 0, first.err
    pruned = (tmp_path / "out" / "prune" / "model.safetensors").read_bytes()
    second = cli("run", recipe, "--out", out)
    assert second.code == 0
    assert second.err.count("skipped (inputs unchanged)") == 3
    changed = _write(
        tmp_path,
        RECIPE.replace(
            "steps: [baseline, sensitivity, plan, prune, verify, evaluate]",
            "steps: [baseline, prune, evaluate]",
        ).replace("macs=0.6", "macs=0.4"),
    )
    third = cli("run", changed, "--out", out)
    assert third.code == 0
    assert "baseline: skipped" in third.err
    assert "prune: running" in third.err and "evaluate: running" in third.err
    assert (tmp_path / "out" / "prune" / "model.safetensors").read_bytes() != pruned
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["final"]["macs"] / run["dense"]["macs"] == pytest.approx(0.4, abs=0.01)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("task: classification", "task: classification\nlearning_rate: 3"),
            "unknown key learning_rate",
        ),
        (
            (
                "steps: [baseline, sensitivity, plan, prune, verify, evaluate]",
                "steps: [baseline, finetune, prune]",
            ),
            "step prune cannot come after finetune",
        ),
        (
            (
                "steps: [baseline, sensitivity, plan, prune, verify, evaluate]",
                "steps: [baseline, plan, prune]",
            ),
            "step plan needs sensitivity before it",
        ),
        (("data: digits", "data: /no/such/data"), "no such file or directory"),
        (
            ("plan: {round_to: 4}", "plan: {round: 4}"),
            r"unknown setting 'round' \(did you mean 'round_to'\?\)",
        ),
        (("target: macs=0.6", "target: flops=0.6"), "target: unknown target 'flops'"),
        (
            (
                "steps: [baseline, sensitivity, plan, prune, verify, evaluate]",
                "steps: [baseline, teleport]",
            ),
            "unknown step 'teleport'",
        ),
        # wrong types, refused before anything runs (bool("false") is true; int("abc") fails)
        (
            ("task: classification", 'task: classification\ntrust_code: "false"'),
            "trust_code must be true or false, got 'false'",
        ),
        (
            ("plan: {round_to: 4}", 'plan: {round_to: 4, blocks: "false"}'),
            "plan: blocks must be true or false, got 'false'",
        ),
        (
            ("task: classification", "task: classification\nseed: abc"),
            "seed must be an integer, got 'abc'",
        ),
        (
            ("model_kwargs: {width: 0.25}", "model_kwargs: [1, 2]"),
            "model_kwargs: expected a mapping",
        ),
        (
            ("task: classification", "task: classification\neval_fraction: 0"),
            r"eval_fraction must be a number in \(0, 1\)",
        ),
        (("input_shape: 1,1,8,8", "input_shape: 1,1,abc"), "input_shape: cannot parse"),
        (
            ("task: classification", "task: classification\neval_fraction: 0.5"),
            "eval_fraction: digits comes with a held-out split of its own",
        ),
        (("ratios: [0.5]", "ratios: 0.5"), "sensitivity: ratios must be a list"),
        (
            ("plan: {round_to: 4}", "plan: {round_to: 4, protect: features.1}"),
            "plan: protect must be a list",
        ),
        # the verify and prune settings: checked before the steps before them run
        (("threads: 1,", 'threads: "1",'), "verify: threads must be a positive integer"),
        (("batch_sizes: [1]", 'batch_sizes: "1,2"'), "verify: batch_sizes must be a list"),
        (("rounds: 1}", "rounds: 1, backend: foo}"), "verify: unknown backend"),
        (
            ("plan: {round_to: 4}", "plan: {round_to: 4}\nprune: {importance: bogus}"),
            "prune: importance must be one of",
        ),
        (("target: macs=0.6", "target: latency_ms=5"), "target: latency_ms needs a latency table"),
        (
            ("plan: {round_to: 4}", "plan: {round_to: 4}\nprune: {ignore: features.0}"),
            r"^prunekit run: error: \S+: prune: ignore must be a list",
        ),
    ],
)
def test_recipes_that_cannot_work_are_refused_in_one_line(
    tmp_path: Path, cli, change, message
) -> None:  # type: ignore[no-untyped-def]
    recipe = _write(tmp_path, RECIPE.replace(*change))
    result = cli("run", recipe, "--out", str(tmp_path / "out"))
    assert result.code == 1
    assert len(result.err.strip().splitlines()) == 1, result.err
    import re

    assert re.search(message, result.err), result.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mine", ["notes.txt", "run.json", "finetune.checkpoint/notes.txt"])
def test_a_run_dir_with_foreign_files_is_refused(tmp_path: Path, cli, mine: str) -> None:  # type: ignore[no-untyped-def]
    """A user's file is never replaced or deleted: also one named like prunekit's run.json,
    or kept in a folder named like a step's checkpoint."""
    out = tmp_path / "out"
    (out / mine).parent.mkdir(parents=True)
    (out / mine).write_text('{"my": "log"}')
    result = cli("run", _write(tmp_path, RECIPE), "--out", str(out))
    assert result.code == 1 and mine.split("/")[0] in result.err
    assert (out / mine).read_text() == '{"my": "log"}'
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [mine]


def test_a_checkpoint_is_resumed_only_for_the_inputs_it_was_trained_from(tmp_path: Path) -> None:
    """The prune step was redone differently (its digest changed): the fine-tune's checkpoint
    of the old pruned model is deleted, never resumed; the same inputs resume."""
    from types import SimpleNamespace

    from prunekit.api.run import _checkpoint
    from prunekit.errors import OutputPathError

    said: list[str] = []
    state = SimpleNamespace(run_dir=tmp_path, say=said.append)
    path, resume = _checkpoint(state, "finetune", "digest-a")  # type: ignore[arg-type]
    assert not resume
    (path / "last.pt").write_bytes(b"weights of the model pruned with l1")
    assert _checkpoint(state, "finetune", "digest-a")[1] is True  # type: ignore[arg-type]
    path, resume = _checkpoint(state, "finetune", "digest-b")  # type: ignore[arg-type]
    assert not resume and not (path / "last.pt").exists()
    assert "trained from other inputs; starting over" in said[-1]
    (path / "notes.txt").write_text("mine")  # not a checkpoint file: never deleted
    with pytest.raises(OutputPathError, match="holds files prunekit did not write"):
        _checkpoint(state, "finetune", "digest-c")  # type: ignore[arg-type]
    assert (path / "notes.txt").read_text() == "mine"


FINETUNE_RECIPE = """\
model: prunekit.nn.mobile_cnn:MobileCNN
model_kwargs: {width: 0.25}
input_shape: 1,1,8,8
data: digits
target: macs=0.5
steps: [train, prune, finetune, evaluate]
train: {epochs: 1, lr: 0.1, batch_size: 32}
finetune: {epochs: 4, batch_size: 8, lr: 0.05}
"""


@pytest.mark.slow
@pytest.mark.train
def test_a_killed_run_resumes_its_finetune_to_the_same_weights(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch
    from safetensors.torch import load_file

    recipe = _write(tmp_path, FINETUNE_RECIPE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every run: same sums

    def run(out: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "prunekit", "run", recipe, "--out", str(out)],
                              env=env, capture_output=True, text=True, check=False)  # fmt: skip

    straight = run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    out = tmp_path / "killed"
    checkpoint = out / "finetune.checkpoint" / "last.pt"
    process = subprocess.Popen([sys.executable, "-m", "prunekit", "run", recipe, "--out", str(out)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists(), "the run ended before the fine-tune's first checkpoint"
    assert not (out / "finetune").exists()
    again = run(out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "train: skipped (inputs unchanged)" in again.stderr
    assert "prune: skipped (inputs unchanged)" in again.stderr
    record = json.loads((out / "finetune" / "finetune.json").read_text())
    assert record["resumed"] is True
    a = load_file(str(tmp_path / "straight" / "finetune" / "model.safetensors"))
    b = load_file(str(out / "finetune" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not checkpoint.parent.exists()


def test_a_data_folder_that_changed_is_measured_again(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """Images added to the data folder: the baseline is measured again (the recipe text is
    the same), and run.json's sample count is the one the accuracy was measured on."""
    import numpy as np
    from PIL import Image

    def images(first: int, last: int) -> None:
        rng = np.random.default_rng(first)
        for label in ("a", "b"):
            (tmp_path / "imgs" / label).mkdir(parents=True, exist_ok=True)
            for i in range(first, last):
                pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "imgs" / label / f"{i}.png")

    recipe = _write(
        tmp_path,
        f"""\
model: prunekit.nn.mobile_cnn:MobileCNN
model_kwargs: {{width: 0.25, num_classes: 2, in_channels: 3}}
input_shape: 1,3,8,8
data: {tmp_path / "imgs"}
steps: [baseline]
""",
    )
    images(0, 6)
    assert cli("run", recipe, "--out", str(tmp_path / "out")).code == 0
    images(6, 16)
    again = cli("run", recipe, "--out", str(tmp_path / "out"))
    assert again.code == 0 and "baseline: running" in again.err, again.err
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    baseline = json.loads((tmp_path / "out" / "baseline" / "baseline.json").read_text())
    assert run["data"]["eval_samples"] == baseline["eval"]["samples"] > 2
