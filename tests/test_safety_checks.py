"""Checked before the work, said when it matters: resumable files that refuse to mix runs,
patterns that must match, options in range, notes instead of silent no-ops."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from prunekit.models import load_model

NET = "import torch\nfrom torch import nn\n\ndef net(width=8):\n    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))\n\ndef deeper():\n    return nn.Sequential(*net()[:4], nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), *net()[4:])\n"  # fmt: skip
SHAPE = ("--input-shape", "1,3,16,16")


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "net.py").write_text(NET)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    from PIL import Image

    root = tmp_path / "images"
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (20, 20), (40 * i, 100 * c, 30)).save(root / f"class{c}" / f"{i}.png")
    return root


def _one_line(result) -> str:  # type: ignore[no-untyped-def]
    assert result.code == 1, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    assert "internal error" not in lines[0]
    return lines[0]


def _last_line(result) -> str:  # type: ignore[no-untyped-def]
    """The error line of a run refused after its progress lines."""
    assert result.code == 1 and "Traceback" not in result.err, (result.out, result.err)
    line = result.err.strip().splitlines()[-1]
    assert "error" in line and "internal error" not in line
    return line


def _sens(cli, *extra: str):  # type: ignore[no-untyped-def]
    return cli("sensitivity", "net.py:net", *SHAPE, "--ratios", "0.5", "--out", "s.json", *extra)


def test_sensitivity_refuses_to_resume_a_file_measured_otherwise(
    cli, here: Path, images: Path
) -> None:  # type: ignore[no-untyped-def]
    assert _sens(cli).code == 0  # random inputs
    settings = json.loads((here / "s.json").read_text())["settings"]
    assert settings["data"] == "random inputs" and settings["seed"] == 0
    assert settings["model"] == "net.py:net" and settings["weights"] is None
    before = (here / "s.json").read_text()
    line = _last_line(_sens(cli, "--data", str(images)))
    assert "measured with other settings" in line and "random inputs" in line
    assert str(images) in line and "--force" in line
    line = _last_line(_sens(cli, "--seed", "1"))
    assert "seed 0 there, 1 now" in line
    assert (here / "s.json").read_text() == before  # refused: the file is untouched
    assert _sens(cli).code == 0  # the same settings resume
    result = _sens(cli, "--data", str(images.relative_to(here)), "--force")  # a relative path
    assert result.code == 0, result.err
    settings = json.loads((here / "s.json").read_text())["settings"]
    assert settings["data"] == str(images.resolve()) and settings["samples"] == 12
    assert len(settings["images_sha256"]) == 16
    # the same folder with one image changed is another data set
    (images / "class0" / "0.png").write_bytes((images / "class0" / "1.png").read_bytes() + b"x")
    assert "images_sha256" in _last_line(_sens(cli, "--data", str(images)))


def test_random_initialisation_is_seeded(here: Path) -> None:
    def weights(**kwargs: object) -> torch.Tensor:
        return load_model("net.py:net", **kwargs).model[0].weight.detach().clone()  # type: ignore[arg-type]

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = weights(), weights()
    assert torch.equal(a, b)
    assert not torch.equal(a, weights(seed=1))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left alone
    tv = [load_model("resnet18").model.conv1.weight[0, 0, 0].clone() for _ in range(2)]
    assert torch.equal(tv[0], tv[1])


def test_a_fingerprint_mismatch_says_what_differs(cli, here: Path) -> None:  # type: ignore[no-untyped-def]
    assert _sens(cli).code == 0
    line = _one_line(cli("plan", "net.py:net", *SHAPE, "--model-kwargs", '{"width": 10}',
                         "--target", "macs=0.8", "--sensitivity", "s.json", "--out", "p.json"))  # fmt: skip
    assert "group '0' has 10 channels here, 8 in the file" in line
    line = _one_line(cli("plan", "net.py:net", "--input-shape", "1,3,24,24", "--target",
                         "macs=0.8", "--sensitivity", "s.json", "--out", "p.json"))  # fmt: skip
    assert "input shapes 1x3x16x16, this model is called with 1x3x24x24" in line
    line = _one_line(cli("plan", "net.py:deeper", *SHAPE, "--target", "macs=0.8",
                         "--sensitivity", "s.json", "--out", "p.json"))  # fmt: skip
    assert "this model has groups the file lacks: '4'" in line
    assert cli("plan", "net.py:net", *SHAPE, "--target", "macs=0.8", "--sensitivity", "s.json",
               "--out", "p.json").code == 0  # fmt: skip
    plan = json.loads((here / "p.json").read_text())
    assert plan["provenance"]["sensitivity"] == "s.json" and plan["provenance"]["seed"] == 0
    line = _one_line(cli("prune", "net.py:net", *SHAPE, "--model-kwargs", '{"width": 10}',
                         "--plan", "p.json", "--out", "pruned"))  # fmt: skip
    assert "group '0' has 10 channels here, 8 in the file" in line
    assert "is a directory" in _one_line(
        cli("prune", "net.py:net", *SHAPE, "--plan", str(here), "--out", "pruned")
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protect", "9"], "--protect pattern 're:9' matches no module"),
        (["--protect", "layer[1"], "--protect: invalid regex 'layer[1'"),
        (["--protect", "re:(("], "--protect: invalid regex '(('"),
        (["--latency-weight", "nan"], "--latency-weight must be a finite number"),
    ],
)
def test_plan_patterns_and_options_are_checked(
    cli, here: Path, args: list[str], message: str
) -> None:  # type: ignore[no-untyped-def]
    assert _sens(cli).code == 0
    line = _one_line(cli("plan", "net.py:net", *SHAPE, "--target", "macs=0.8", "--sensitivity",
                         "s.json", "--out", "p.json", *args))  # fmt: skip
    assert message in line
    assert not (here / "p.json").exists()


def test_prune_regex_errors_are_user_errors(cli, here: Path) -> None:  # type: ignore[no-untyped-def]
    line = _one_line(cli("prune", "net.py:net", *SHAPE, "--ratio", "0.5", "--ignore", "0[",
                         "--out", "p"))  # fmt: skip
    assert "--ignore: invalid regex '0['" in line
    assert not (here / "p").exists()


def test_round_to_larger_than_a_group_is_noted(cli, here: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("prune", "net.py:net", *SHAPE, "--ratio", "0.5", "--round-to", "8", "--out", "p")
    assert result.code == 0, result.err
    notes = json.loads((here / "p" / "prune.json").read_text())["notes"]
    assert notes == [
        "group 2 has 6 channels, fewer than round_to=8: its kept count (3) is not a multiple of 8"
    ]
    assert f"note: {notes[0]}" in result.out


def test_timing_options_are_checked(cli, here: Path) -> None:  # type: ignore[no-untyped-def]
    base = ["bench", "net.py:net", *SHAPE, "--batch-sizes", "1", "--min-time", "0",
            "--max-time", "0.05", "--min-repeats", "2"]  # fmt: skip
    for value in ("nan", "0", "-0.1", "inf"):
        line = _one_line(cli(*base, "--target-ci", value))
        assert "--target-ci" in line or "finite" in line, line
    assert "finite" in _one_line(cli(*base[:-4], "--max-time", "inf", "--min-repeats", "2"))
    result = cli(*base, "--threads", "4096", "--json")
    assert result.code == 0, result.err
    assert "--threads 4096 is more than this machine's" in result.err
    assert "more than" in cli("profile", "net.py:net", *SHAPE, "--quick", "--threads", "4096",
                              "--out", "lut.json").err  # fmt: skip


def test_a_hf_directory_without_tokenizer_fails_before_the_work(
    cli, tiny_bert_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "bert"
    shutil.copytree(tiny_bert_dir, copy)
    line = _one_line(cli("prune", str(copy), "--heads", "0.5", "--out", str(tmp_path / "out")))
    assert "holds no tokenizer" in line and "copy the tokenizer" in line
    assert not (tmp_path / "out").exists()


def test_plan_notes_groups_smaller_than_round_to(cli, here: Path) -> None:  # type: ignore[no-untyped-def]
    assert _sens(cli).code == 0
    result = cli("plan", "net.py:net", *SHAPE, "--target", "macs=0.8", "--sensitivity", "s.json",
                 "--round-to", "7", "--out", "p.json")  # fmt: skip
    assert result.code == 0, result.err
    note = "round_to=7 is more than the channels of 1 groups (2): their counts are not rounded"
    assert note in json.loads((here / "p.json").read_text())["notes"]
    assert f"note: {note}" in result.out
