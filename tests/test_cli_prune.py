"""``prunekit prune`` as a user runs it, and artifact directories on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunekit.artifact import ArtifactError, load
from prunekit.models import load_model


def test_prune_vit_ratio_writes_a_loadable_artifact(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "vit"
    result = cli("prune", "vit_b_16", "--ratio", "0.3", "--out", str(out), "--json")
    assert result.code == 0, result.err
    record = result.json()
    assert record["before"]["params"] == 86_567_656
    assert record["after"]["params"] < 0.6 * record["before"]["params"]
    assert sorted(p.name for p in out.iterdir()) == [
        ".prunekit-output.json",
        "model.safetensors",
        "prune.json",
        "prunekit.json",
    ]
    assert json.loads((out / "prune.json").read_text()) == record
    loaded = load_model(str(out))
    assert loaded.source == "artifact" and loaded.input_spec.make(1).args[0].shape == (
        1,
        3,
        224,
        224,
    )
    heads = {
        m.num_heads
        for m in loaded.model.modules()
        if type(m).__name__ == "PrunedMultiheadAttention"
    }
    assert heads == {9}  # 12 heads - floor(0.3 * 12)
    analysis = cli("analyze", str(out), "--json").json()
    assert (
        analysis["params"] == record["after"]["params"]
        and analysis["macs"] == record["after"]["macs"]
    )


def test_prune_to_a_macs_target(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli(
        "prune",
        "resnet18",
        "--target",
        "macs=0.6",
        "--round-to",
        "8",
        "--out",
        str(tmp_path / "r"),
        "--json",
    )
    assert result.code == 0, result.err
    record = result.json()
    assert abs(record["kept"]["macs"] - 0.6) <= 0.01
    widths = [g["kept"] for g in record["groups"]]
    assert all(w % 8 == 0 for w in widths)
    bench = cli(
        "bench",
        str(tmp_path / "r"),
        "--batch-sizes",
        "1",
        "--min-time",
        "0",
        "--max-time",
        "0.2",
        "--min-repeats",
        "2",
        "--json",
    )
    assert bench.code == 0, bench.err
    assert bench.json()["results"][0]["batch_size"] == 1


def test_pruned_model_gives_the_same_outputs_after_loading(
    cli, user_module, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cnn"
    assert (
        cli(
            "prune",
            f"{user_module}:small_cnn",
            "--input-shape",
            "1,3,16,16",
            "--ratio",
            "0.5",
            "--out",
            str(out),
        ).code
        == 0
    )
    model, manifest = load(out, trust_code=True)  # the test's own module
    assert manifest["tensors"]["0.weight"]["shape"] == [4, 3, 3, 3]
    x = torch.randn(2, 3, 16, 16)
    assert model(x).shape == (2, 10)


def _one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.code == 1, result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ratio", "1.0"], "ratio must be a number in [0, 1)"),
        (["--ratio", "-0.2"], "ratio must be a number in [0, 1)"),
        (["--ratio", "0.3", "--ignore", "layer9"], "matches no module; closest modules: layer4"),
        (["--target", "macs=0"], "must be in (0, 1]"),
        (["--target", "flops=0.5"], "expected macs=F"),
        (
            ["--target", "macs=0.2", "--ignore", "re:layer[1-4].*"],
            "cannot keep only 20% of the MACs",
        ),
    ],
)
def test_bad_prune_input(cli, tmp_path: Path, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    line = _one_line_error(cli("prune", "resnet18", *args, "--out", str(out)))
    assert message in line
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary directory left behind


def test_existing_output_is_refused_then_replaced_with_force(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = _one_line_error(cli("prune", "resnet18", "--ratio", "0.2", "--out", str(out)))
    assert "already exists" in line and (out / "notes.txt").read_text() == "mine"
    line = _one_line_error(cli("prune", "resnet18", "--ratio", "0.2", "--out", str(out), "--force"))
    assert "refusing to replace" in line and "notes.txt" in line  # --force spares user files
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert cli("prune", "resnet18", "--ratio", "0.2", "--out", str(out)).code == 0  # empty: fine
    assert cli("prune", "resnet18", "--ratio", "0.3", "--out", str(out), "--force").code == 0
    assert json.loads((out / "prune.json").read_text())["config"]["ratio"] == 0.3


def _artifact(cli, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path / "a"
    assert cli("prune", "resnet18", "--ratio", "0.2", "--out", str(out)).code == 0
    return out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.safetensors").unlink(), "is missing model.safetensors"),
        (lambda d: (d / "model.safetensors").write_bytes(b"x" * 64), "does not match its checksum"),
        (lambda d: (d / "prunekit.json").write_text("{not json"), "is not valid JSON"),
        (
            lambda d: (d / "prunekit.json").write_text(
                json.dumps({**json.loads((d / "prunekit.json").read_text()), "format_version": 99})
            ),
            "format version 99",
        ),
        (
            lambda d: (d / "prunekit.json").write_text(
                json.loads((d / "prunekit.json").read_text())["tensors"].pop("fc.bias") and "{}"
            ),
            "not a prunekit artifact manifest",
        ),
    ],
)
def test_damaged_artifact_gives_a_clear_error(cli, tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    out = _artifact(cli, tmp_path)
    damage(out)
    with pytest.raises(ArtifactError, match=message):
        load(out)
    assert message in _one_line_error(cli("analyze", str(out)))


def test_manifest_shape_mismatch(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = _artifact(cli, tmp_path)
    manifest = json.loads((out / "prunekit.json").read_text())
    manifest["tensors"]["fc.weight"]["shape"][1] += 1
    (out / "prunekit.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="does not fit the architecture"):
        load(out)
