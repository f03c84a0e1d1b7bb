"""The command line as a user meets it: numbers, JSON fields, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

MOBILENET_V2_PARAMS = 3_504_872
MOBILENET_V2_MACS = 300.8e6  # torchvision's published 0.301 GMACs


def test_analyze_mobilenet_v2_json(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("analyze", "mobilenet_v2", "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert data["params"] == MOBILENET_V2_PARAMS
    assert data["macs"] == pytest.approx(MOBILENET_V2_MACS, rel=0.02)
    assert data["param_bytes"] == 4 * MOBILENET_V2_PARAMS
    assert data["flops"] == 2 * data["macs"]
    layers = data["layers"]
    assert {"name", "type", "macs", "params"} <= set(layers[0])
    assert layers[0] == {**layers[0], "name": "features.0.0", "type": "Conv2d", "macs": 10_838_016}
    assert sum(layer["macs"] for layer in layers) == data["macs"]
    assert sum(layer["params"] for layer in layers) == data["params"]
    assert data["source"]["input"] == {"kind": "tensor", "shapes": [[1, 3, 224, 224]]}


def test_analyze_human_table(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("analyze", "resnet18", "--input-shape", "1,3,112,112", "--top", "3")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split()[:4] == ["layer", "type", "output", "MACs"]
    assert len([line for line in lines if "Conv2d" in line or "Linear" in line]) == 3
    assert "parameters   11,689,512" in result.out
    assert "1 MAC = 2 FLOPs" in result.out


def test_analyze_user_callable_and_hf_dir(cli, user_module, tiny_bert_dir) -> None:  # type: ignore[no-untyped-def]
    mlp = cli("analyze", f"{user_module}:mlp", "--json").json()
    assert mlp["macs"] == 20 * 30 + 30 * 5 and mlp["params"] == 20 * 30 + 30 + 30 * 5 + 5
    bert = cli("analyze", str(tiny_bert_dir), "--seq-len", "8", "--json").json()
    per_layer = 4 * 8 * 32 * 32 + 2 * 8 * 8 * 32 + 2 * 8 * 32 * 48
    assert bert["macs"] == 2 * per_layer + 32 * 32


def test_bench_json_fields(cli, user_module) -> None:  # type: ignore[no-untyped-def]
    result = cli(
        "bench", f"{user_module}:small_cnn", "--input-shape", "1,3,16,16",
        "--batch-sizes", "1,4", "--threads", "1", "--min-time", "0", "--max-time", "0.3",
        "--min-repeats", "3", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = result.json()
    assert data["backend"] == "eager" and data["device"] == "cpu" and data["threads"] == 1
    assert [r["batch_size"] for r in data["results"]] == [1, 4]
    for r in data["results"]:
        assert r["p90_ms"] >= r["median_ms"] > 0
        assert r["throughput"] == pytest.approx(r["batch_size"] * 1000 / r["median_ms"])
        assert len(r["samples_ms"]) == r["repeats"] >= 3
    assert "preparing batch size 4" in result.err  # progress goes to stderr, not stdout


@pytest.mark.slow
def test_bench_mobilenet_v2_onnxruntime(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli(
        "bench", "mobilenet_v2", "--backend", "onnxruntime", "--batch-sizes", "1,2",
        "--min-time", "0", "--max-time", "0.5", "--min-repeats", "3", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = result.json()
    assert data["backend"] == "onnxruntime"
    assert [r["batch_size"] for r in data["results"]] == [1, 2]
    parity = data["backend_info"]["parity"]
    assert all(p["max_abs_diff"] <= p["tolerance"] for p in parity.values())


def test_models_lists_torchvision_names(cli) -> None:  # type: ignore[no-untyped-def]
    data = cli("models", "--json").json()
    assert "mobilenet_v2" in data["classification"] and "fcn_resnet50" in data["segmentation"]


BAD_INPUTS = [
    (["analyze", "mobilenetv2"], "unknown model 'mobilenetv2'. Did you mean: mobilenet_v2"),
    (["analyze", "no_such_module_xyz:build"], "cannot import module 'no_such_module_xyz'"),
    (
        ["analyze", "resnet18", "--input-shape", "1,3,2"],
        "forward pass failed on inputs float32[1,3,2]",
    ),
    (["analyze", "./missing/model_dir"], "no such file or directory: ./missing/model_dir"),
    (["analyze", "missing_file.py:build"], "no such file: missing_file.py"),
    (["analyze", "resnet18", "--input-shape", "1,3,a"], "cannot parse input shape"),
    (["analyze", "resnet18", "--model-kwargs", "{bad"], "--model-kwargs is not valid JSON"),
    (["analyze", "resnet18", "--top", "0"], "--top must be a positive integer"),
    # 4 TB: no machine allocates it (an internal error before)
    (
        ["analyze", "prunekit.nn.mobile_cnn:MobileCNN", "--input-shape", "1,1,1000000,1000000"],
        "(4e+03 GB) cannot be made here",
    ),
    (["bench", "resnet18", "--batch-sizes", "1,x"], "cannot parse --batch-sizes"),
    (["bench", "resnet18", "--threads", "0"], "--threads must be a positive integer"),
    (["bench", "resnet18", "--backend", "tvm"], "invalid choice: 'tvm'"),
    # timing options were clamped without a word (--max-time 1 then ran for 5 s)
    (
        ["bench", "resnet18", "--min-time", "5", "--max-time", "1"],
        "--min-time 5 is more than --max-time 1",
    ),
    (["bench", "resnet18", "--min-repeats", "-5"], "--min-repeats must be at least 1, got -5"),
    (["bench", "resnet18", "--target-ci", "nan"], "--target-ci must be a positive fraction"),
    (["analyze"], "the following arguments are required: MODEL"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_1(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from prunekit.cli.main import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors exit through SystemExit
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert message in lines[0]
    assert "Traceback" not in captured.err


def test_debug_shows_the_traceback() -> None:
    from prunekit.cli.main import main
    from prunekit.errors import ModelSourceError

    with pytest.raises(ModelSourceError):
        main(["analyze", "mobilenetv2", "--debug"])


def _run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prunekit.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from prunekit.cli.main import build_parser\n"
        "build_parser().format_help()\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_console_script_end_to_end(tmp_path: Path) -> None:
    result = _run("analyze", "squeezenet1_1", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["params"] == 1_235_496
    bad = _run("analyze", "squeezenet", cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "Did you mean" in bad.stderr
