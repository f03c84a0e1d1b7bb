"""The microcontroller path end to end: digits MLP -> flash budget -> C, as the CLI runs it,
and every bad input the issue lists (clear error, exit 1, no files written or touched)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit._outputs import check_output_dir
from prunekit.data.idx import write_idx
from prunekit.errors import DeploymentError, PrunekitError
from prunekit.mcu import deploy
from prunekit.mcu.compile import find_c_compiler
from prunekit.mcu.compress import Recipe, compress_to_budget, integer_accuracy, train_dense
from prunekit.mcu.datasets import load_splits
from prunekit.mcu.deploy import dense_facts, write_deployment

TINY = Recipe(dense_epochs=15, prune_epochs=8, finetune_epochs=4, sharing_epochs=2,
              batch_size=64, patience=4)  # fmt: skip
BUDGET = 3000


@pytest.fixture(scope="module")
def digits_compression():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    data = load_splits("digits")
    dense = train_dense([64, 48, 10], data, TINY)
    facts = dense_facts(
        dense, [64, 48, 10], float((dense(data.test_x).argmax(1) == data.test_y).float().mean())
    )
    return data, facts, compress_to_budget(dense, data, BUDGET, TINY, value_bits=(8, 4))


def test_candidates_fit_the_budget_and_the_best_is_the_most_accurate(digits_compression) -> None:  # type: ignore[no-untyped-def]
    data, facts, compression = digits_compression
    assert {c.value_bits for c in compression.candidates} == {8, 4}
    for cand in compression.candidates:
        assert cand.bytes <= BUDGET
        assert cand.report.total == cand.bytes
        # the shared candidate really has at most 15 non-zero values per layer
        if cand.value_bits == 4:
            for layer in cand.qmodel.layers:
                assert len(np.unique(layer.weight[layer.weight != 0])) <= 15
    best = compression.best
    assert best.val_accuracy == max(c.val_accuracy for c in compression.candidates)
    assert facts.bytes / best.bytes >= 14_440 / BUDGET  # 64-48-10 is 14,440 bytes in fp32
    assert integer_accuracy(best.qmodel, data.test_x, data.test_y) > 0.85


def test_write_deployment_report_and_c_check(digits_compression, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, facts, compression = digits_compression
    out = tmp_path / "deploy"
    report = write_deployment(out, compression, facts, data, "3000")
    assert sorted(p.name for p in out.iterdir()) == [
        ".prunekit-output.json", "harness.c", "prunekit_model.c", "prunekit_model.h", "report.json",
        "weights.safetensors",
    ]  # fmt: skip
    assert json.loads((out / "report.json").read_text()) == report
    assert report["dense"]["bytes"] == 4 * (64 * 48 + 48 + 48 * 10 + 10)
    assert report["compressed"]["bytes"] == compression.best.bytes <= report["flash_budget"]
    assert report["compression_ratio"] == pytest.approx(
        report["dense"]["bytes"] / compression.best.bytes
    )
    assert report["compressed"]["accuracy"] == integer_accuracy(
        compression.best.qmodel, data.test_x, data.test_y
    )
    if find_c_compiler() is None:
        assert report["c_check"]["agreement"] is None and report["c_check"]["reason"]
    else:
        assert report["c_check"]["agreement"] == 1.0
        assert report["c_check"]["logits_identical"] is True
        assert report["c_check"]["samples"] == len(data.test_y)
        # the object's constant data holds exactly the accounted bytes, plus nothing big
        assert report["flash"]["const_data"] >= report["compressed"]["bytes"]
    assert [p.name for p in tmp_path.iterdir()] == ["deploy"], "no staging directory left behind"


def test_no_compiler_gives_null_agreement_with_a_reason(
    digits_compression, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    data, facts, compression = digits_compression
    monkeypatch.setattr(deploy, "find_c_compiler", lambda: None)
    report = write_deployment(tmp_path / "out", compression, facts, data, "3000")
    assert report["c_check"] == {
        "agreement": None,
        "reason": pytest.approx(report["c_check"]["reason"]),
    }
    assert "no C compiler" in report["c_check"]["reason"]
    assert (tmp_path / "out" / "prunekit_model.c").is_file()


def test_existing_output_is_refused_and_untouched(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    result = cli(
        "mcu", "--dataset", "digits", "--arch", "64-10", "--flash", "2KB", "--out", str(out)
    )
    assert result.code == 1
    assert "already exists" in result.err and "--force" in result.err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--arch", "64-x-10"], "cannot parse architecture"),
        (["--arch", "784-300-10"], "64 features"),
        (["--flash", "lots"], "cannot parse the byte budget"),
        (["--flash", "20"], "cannot be met"),
        (["--values", "9"], "--values"),
        (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(
    cli, tmp_path: Path, argv: list[str], message: str
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    base = ["mcu", "--dataset", "digits", "--quick", "--out", str(out)]
    if "--flash" not in argv:
        base += ["--flash", "4KB"]
    result = cli(*base, *argv)
    assert result.code == 1, result.out
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def _write_split(root: Path, prefix: str, n: int, gz: bool = False) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(n, 4, 4), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    write_idx(root / f"{prefix}-images-idx3-ubyte", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    if gz:
        for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
            path = root / name
            (root / f"{name}.gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()


def test_missing_idx_files_are_named(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _write_split(data_dir, "train", 20)
    result = cli(
        "mcu", "--dataset", "mnist", "--data-dir", str(data_dir), "--out", str(tmp_path / "o")
    )
    assert result.code == 1
    assert "t10k-images-idx3-ubyte" in result.err and "t10k-labels-idx1-ubyte" in result.err
    assert not (tmp_path / "o").exists()


def test_corrupt_idx_header_is_reported(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _write_split(data_dir, "train", 20)
    _write_split(data_dir, "t10k", 10)
    (data_dir / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x77\x03garbage")
    result = cli(
        "mcu",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "o"),
    )
    assert result.code == 1
    assert "t10k-images-idx3-ubyte" in result.err
    assert not (tmp_path / "o").exists()


def test_offline_mnist_download_fails_clearly(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torchvision.datasets

    from prunekit.errors import DataError
    from prunekit.mcu import datasets

    def offline(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets, "_MNIST_CACHE", tmp_path / "cache")
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError, match=r"could not download MNIST.*--data-dir"):
        load_splits("mnist")


@pytest.mark.slow
def test_demo_is_the_readme_main_job(cli, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    result = cli("demo")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "prunekit-demo" / "report.json").read_text())
    assert report["demo"] is True and report["dataset"] == "digits"
    assert report["compressed"]["bytes"] <= report["flash_budget"] == 6 * 1024
    assert report["compression_ratio"] > 10
    assert report["compressed"]["accuracy"] > report["dense"]["accuracy"] - 0.05
    if find_c_compiler() is not None:
        assert report["c_check"]["agreement"] == 1.0
    assert "C check" in result.out and "smaller" in result.out
    # running the README command again replaces the demo's own output
    assert cli("demo", "--values", "8").code == 0
    assert (
        json.loads((tmp_path / "prunekit-demo" / "report.json").read_text())["candidates"][0][
            "values"
        ]
        == "int8"
    )


def test_deploy_error_for_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(PrunekitError, match="not a directory"):
        check_output_dir(tmp_path / "f", "prunekit mcu", force=True)


def test_plan_says_by_how_much_a_budget_is_missed() -> None:
    from prunekit.mcu.arch import build_mlp
    from prunekit.mcu.compress import plan_density

    model = build_mlp([64, 48, 10])
    with pytest.raises(
        DeploymentError, match=r"cannot be met: the smallest .* is \d+ bytes \(\d+ over"
    ):
        plan_density(model, 50, 4, "prunekit", neuron_exponent=1.0)
    density = plan_density(model, 2000, 4, "prunekit", neuron_exponent=1.0)
    assert 0 < density < 1
    assert plan_density(model, 10**6, 8, "prunekit") == 1.0  # dense int8 fits: no pruning


def test_the_summary_compares_weights_with_weights() -> None:
    """The dense side of the 'weights' row counts weights, as the compressed side's non-zeros
    do: 64-16-10 has 1,184 (its 1,210 parameters include 26 biases)."""
    from prunekit.cli.mcu import _dense_weights

    assert _dense_weights("64-16-10") == 64 * 16 + 16 * 10 == 1184
