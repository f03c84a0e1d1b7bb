"""``prunekit finetune`` and ``prunekit evaluate`` on a pruned artifact: held-out reporting,
what stopped training, resume after a kill, and bad input refused in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import prunekit as pk

SPEC = "prunekit.nn.mobile_cnn:MobileCNN"
SHAPE = [(1, 1, 8, 8)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A dense MobileCNN trained on the digits' fit part, and a copy pruned to half its MACs."""
    root = tmp_path_factory.mktemp("ft")
    dense = pk.load(SPEC, input_shapes=SHAPE, model_kwargs={"width": 0.25})
    pk.recover_(dense.model, "digits", pk.RecoverConfig(epochs=4, lr=0.1, batch_size=32))
    pk.save(dense.model, root / "dense")
    pruned = pk.load(root / "dense")
    pk.prune_(pruned.model, pruned.input_spec.make(1), pk.TargetPruning(macs=0.5))
    pk.save(pruned.model, root / "pruned")
    wrong = pk.load(SPEC, input_shapes=SHAPE, model_kwargs={"width": 0.25, "num_classes": 7})
    pk.save(wrong.model, root / "wrong")
    return {
        "root": root,
        "dense": root / "dense",
        "pruned": root / "pruned",
        "wrong": root / "wrong",
    }


def _finetune(cli, models, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli("finetune", str(models["pruned"]), "--data", "digits", "--teacher",
               str(models["dense"]), "--batch-size", "32", "--out", str(out), *extra)  # fmt: skip


def test_finetune_reports_on_held_out_data_and_writes_an_artifact(cli, models) -> None:  # type: ignore[no-untyped-def]
    out = models["root"] / "out-epochs"
    result = _finetune(cli, models, out, "--epochs", "2", "--json")
    assert result.code == 0, result.err
    record = json.loads((out / "finetune.json").read_text())
    assert record == result.json()
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert all(h["val_score"] is not None for h in record["history"])
    assert record["stopped_by"] == "epochs"
    split = record["data"]["split"]
    assert (split["fit"], split["eval"]) == (1347, 450)
    assert record["eval"]["samples"] == 450 and record["eval"]["split"] == "eval"
    # validation is carved from the fit part, never from the eval part
    assert record["validation"]["samples"] + record["train_samples"] == 1347
    assert record["retention"] == pytest.approx(
        record["eval"]["top1"] / record["teacher_eval"]["top1"]
    )
    # the artifact is the fine-tuned model: evaluating it again gives the recorded accuracy
    again = cli("evaluate", str(out), "--data", "digits", "--json")
    assert again.code == 0, again.err
    assert again.json()["top1"] == record["eval"]["top1"]
    assert not (models["root"] / "out-epochs.checkpoint").exists()


def test_a_time_budget_says_it_stopped_training(cli, models) -> None:  # type: ignore[no-untyped-def]
    out = models["root"] / "out-time"
    result = _finetune(cli, models, out, "--seconds", "0.5", "--json")
    assert result.code == 0, result.err
    record = result.json()
    assert record["stopped_by"] == "time"
    assert record["seconds"] < 30


def test_evaluate_with_a_reference_gives_retention(cli, models) -> None:  # type: ignore[no-untyped-def]
    result = cli("evaluate", str(models["pruned"]), "--data", "digits", "--reference",
                 str(models["dense"]), "--json")  # fmt: skip
    assert result.code == 0, result.err
    data = result.json()
    assert data["retention"] == pytest.approx(data["top1"] / data["reference"]["top1"])
    assert data["samples"] == 450 and data["data"]["split"]["eval"] == 450


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--resume",), "--resume: no checkpoint at"),
        (("--data", "/no/such/dir"), "no such file or directory"),
        (("--epochs", "0"), "epochs must be a positive integer"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(cli, models, args, message) -> None:  # type: ignore[no-untyped-def]
    out = models["root"] / "never"
    result = _finetune(cli, models, out, *args)
    assert result.code == 1
    assert len(result.err.strip().splitlines()) == 1 and message in result.err, result.err
    assert not out.exists()


def test_a_teacher_of_another_shape_is_refused(cli, models) -> None:  # type: ignore[no-untyped-def]
    out = models["root"] / "never2"
    result = cli("finetune", str(models["pruned"]), "--data", "digits", "--teacher",
                 str(models["wrong"]), "--out", str(out))  # fmt: skip
    assert result.code == 1
    assert "teacher's outputs [1, 7] do not match the student's [1, 10]" in result.err
    assert not out.exists()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
def test_a_killed_finetune_resumes_to_the_same_weights(models) -> None:  # type: ignore[no-untyped-def]
    base = ["finetune", str(models["pruned"]), "--data", "digits", "--teacher", str(models["dense"]),
            "--batch-size", "8", "--epochs", "6", "--lr", "0.05"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every run: same sums

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "prunekit", *base, *extra], env=env,
                              capture_output=True, text=True, check=False)  # fmt: skip

    straight = models["root"] / "straight"
    assert run("--out", str(straight)).returncode == 0
    out = models["root"] / "killed"
    checkpoint = models["root"] / "killed.checkpoint" / "last.pt"
    process = subprocess.Popen([sys.executable, "-m", "prunekit", *base, "--out", str(out)],
                               env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if not checkpoint.exists():
        pytest.fail("the fine-tune ended before its first checkpoint; make the run longer")
    assert not out.exists()
    stale = run("--out", str(out))
    assert stale.returncode == 1 and "--resume" in stale.stderr  # never trains over it silently
    resumed = run("--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = _weights(straight), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.dist
@pytest.mark.slow
def test_torchrun_two_ranks_trains_and_only_rank_zero_writes(models) -> None:  # type: ignore[no-untyped-def]
    out = models["root"] / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", "29533", "-m", "prunekit", "finetune", str(models["pruned"]),
         "--data", "digits", "--teacher", str(models["dense"]), "--epochs", "2",
         "--batch-size", "16", "--out", str(out), "--json"],
        env=env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout)  # one JSON document: rank 1 printed nothing
    assert record["stopped_by"] == "epochs" and len(record["history"]) == 2
    assert record["eval"]["samples"] == 450
    # what was written is the trained model: evaluating the artifact gives the recorded top-1
    evaluated = pk.evaluate(pk.load(out).model, "digits")
    assert evaluated["top1"] == record["eval"]["top1"]
    assert not (models["root"] / "ddp.checkpoint").exists()


def test_resume_from_another_models_checkpoint_is_refused(cli, models) -> None:  # type: ignore[no-untyped-def]
    other = pk.load(models["dense"])  # not the pruned model: other tensor shapes
    pk.recover_(other.model, "digits", pk.RecoverConfig(epochs=1, batch_size=64),
                checkpoint_dir=models["root"] / "mixed.checkpoint")  # fmt: skip
    out = models["root"] / "mixed"
    result = _finetune(cli, models, out, "--resume", "--epochs", "1")
    assert result.code == 1
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert "checkpoint" in result.err and "mixed.checkpoint" in result.err
    assert not out.exists()
    assert (models["root"] / "mixed.checkpoint" / "last.pt").is_file()  # left as it was
