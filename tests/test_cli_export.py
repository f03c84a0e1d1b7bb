"""``prunekit export``: each format loads back in its own runtime and gives the PyTorch model's
outputs; a disagreement, or an output that must not be replaced, keeps nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import prunekit
from prunekit.models import load_model

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

CNN = ["prunekit.nn.mobile_cnn:MobileCNN", "--model-kwargs", '{"width": 0.25}']
SHAPE = ["--input-shape", "1,1,8,8"]


def _cnn() -> torch.nn.Module:
    return load_model(CNN[0], model_kwargs={"width": 0.25}, input_shapes=[(1, 1, 8, 8)]).model


def _export(cli, fmt: str, out: Path, *extra: str) -> dict[str, Any]:
    result = cli("export", *CNN, *SHAPE, "--format", fmt, "--out", str(out), "--json", *extra)
    assert result.code == 0, result.err
    return result.json()  # type: ignore[no-any-return]


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_onnx_dynamic_batch_runs_in_onnxruntime(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "cnn.onnx"
    data = _export(cli, "onnx", out)
    assert data["format"] == "onnx" and data["dynamic_batch"] is True
    assert data["bytes"] == out.stat().st_size
    assert data["inputs"] == [{"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    assert data["outputs"] == [{"name": "output", "shape": ["batch", 10], "dtype": "float32"}]
    assert data["dynamic_axes"] == {"input": {"0": "batch"}, "output": {"0": "batch"}}
    parity = data["parity"]
    assert parity["batch_sizes"] == [1, 3] and set(parity["batches"]) == {"1", "3"}
    assert parity["max_abs_diff"] <= parity["batches"]["1"]["tolerance"]
    assert (parity["atol"], parity["rtol"]) == (1e-4, 1e-3)
    assert data["opset"] == onnx.load(str(out)).opset_import[0].version
    # a batch the check never saw runs and matches
    x = torch.randn(5, 1, 8, 8)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = _cnn()(x)
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-3)
    assert _listing(tmp_path) == ["cnn.onnx"]  # one file, nothing beside it


def test_onnx_static_batch_and_opset(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "cnn.onnx"
    result = cli("export", *CNN, "--input-shape", "2,1,8,8", "--format", "onnx", "--out",
                 str(out), "--static-batch", "--opset", "18")  # fmt: skip
    assert result.code == 0, result.err
    assert "max abs error" in result.out and f"wrote {out}" in result.out
    proto = onnx.load(str(out))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [2, 1, 8, 8]
    assert {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"] == 18
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        session.run(None, {"input": torch.randn(3, 1, 8, 8).numpy()})


def test_onnx_named_inputs_of_a_hugging_face_model(
    cli: Any, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bert.onnx"
    result = cli("export", str(tiny_bert_dir), "--seq-len", "8", "--format", "onnx",
                 "--out", str(out), "--json")  # fmt: skip
    assert result.code == 0, result.err
    data = result.json()
    assert [v["name"] for v in data["inputs"]] == ["input_ids", "attention_mask"]
    assert [v["name"] for v in data["outputs"]] == ["last_hidden_state", "pooler_output"]
    assert data["inputs"][0] == {"name": "input_ids", "shape": ["batch", 8], "dtype": "int64"}
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ids = torch.randint(0, 64, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    got = session.run(["last_hidden_state"], {"input_ids": ids.numpy(),
                                              "attention_mask": mask.numpy()})  # fmt: skip
    model = load_model(str(tiny_bert_dir)).model
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(torch.from_numpy(got[0]), expected, atol=1e-4, rtol=1e-3)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_loads_with_torch_jit(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "cnn.pt"
    data = _export(cli, "torchscript", out)
    assert data["format"] == "torchscript" and data["exporter"] == "torch.jit.trace"
    assert data["opset"] is None and data["parity"]["batch_sizes"] == [1, 3]
    loaded = torch.jit.load(str(out))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), _cnn()(x))


def test_safetensors_artifact_round_trip_is_bit_identical(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "cnn"
    data = _export(cli, "safetensors", out)
    assert data["parity"]["max_abs_diff"] == 0.0 and data["parity"]["max_rel_diff"] == 0.0
    assert _listing(out) == [".prunekit-output.json", "model.safetensors", "prunekit.json"]
    assert json.loads((out / ".prunekit-output.json").read_text())["command"] == "prunekit export"
    reloaded = prunekit.load(out).model
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(reloaded(x), _cnn()(x))
    again = cli("export", *CNN, *SHAPE, "--format", "safetensors", "--out", str(out), "--force")
    assert again.code == 0, again.err  # its own previous output is replaced


def _perturbed_run(run: Any) -> Any:
    def perturbed(self: Any, names: Any, feeds: Any, *args: Any, **kwargs: Any) -> Any:
        return [o + 0.5 for o in run(self, names, feeds, *args, **kwargs)]

    return perturbed


def test_a_parity_failure_keeps_nothing(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort.InferenceSession, "run", _perturbed_run(ort.InferenceSession.run))
    out = tmp_path / "cnn.onnx"
    result = cli("export", *CNN, *SHAPE, "--format", "onnx", "--out", str(out))
    assert result.code == 1
    error = result.err.strip().splitlines()[-1]
    assert error.startswith("prunekit export: error: ONNX Runtime")
    assert "output 0 (output) differs from eager PyTorch: max abs difference 0.5" in error
    assert "the export was not kept" in error
    assert _listing(tmp_path) == []  # no file, no staging file


def test_a_failed_artifact_check_leaves_the_previous_export(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cnn"
    _export(cli, "safetensors", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    from prunekit import artifact

    real_load = artifact.load

    def perturbed_load(*args: Any, **kwargs: Any) -> Any:
        model, manifest = real_load(*args, **kwargs)
        with torch.no_grad():
            list(model.parameters())[-1].add_(0.5)  # the classifier's bias
        return model, manifest

    monkeypatch.setattr(artifact, "load", perturbed_load)
    result = cli("export", *CNN, *SHAPE, "--format", "safetensors", "--out", str(out), "--force")
    assert result.code == 1
    assert (
        "prunekit.artifact.load at batch 1, output 0 (output) differs from eager PyTorch: "
        "max abs difference 0.5" in result.err
    )
    assert _listing(tmp_path) == ["cnn"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_exporter_failure_is_one_line(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("unsupported operator aten::frobnicate\n  at line 1\n  at line 2")

    monkeypatch.setattr(torch.onnx, "export", broken)
    result = cli("export", *CNN, *SHAPE, "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert result.code == 1
    assert result.err.strip().splitlines()[-1] == (
        "prunekit export: error: ONNX export failed with both exporters: torch.export: "
        "RuntimeError: unsupported operator aten::frobnicate | torchscript: RuntimeError: "
        "unsupported operator aten::frobnicate"
    )
    assert _listing(tmp_path) == []


def test_an_artifact_directory_as_model(cli: Any, tmp_path: Path) -> None:
    pruned = tmp_path / "pruned"
    done = cli("prune", *CNN, *SHAPE, "--ratio", "0.5", "--out", str(pruned))
    assert done.code == 0, done.err
    out = tmp_path / "pruned.onnx"
    result = cli("export", str(pruned), "--format", "onnx", "--out", str(out), "--json")
    assert result.code == 0, result.err
    assert result.json()["source"]["source"] == "artifact"
    model = load_model(str(pruned)).model
    x = torch.randn(2, 1, 8, 8)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x)
    (got,) = session.run(None, {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-3)
    assert expected.shape == (2, 10) and sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in _cnn().parameters()
    )


BAKED = """
import torch
from torch import nn

class Baked(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x).reshape(int(x.shape[0]), 3)  # a trace keeps the number

def build():
    return Baked()
"""


def test_a_trace_that_fixed_its_batch_fails_the_dynamic_check(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "baked.py").write_text(BAKED)
    spec = f"{tmp_path / 'baked.py'}:build"
    out = tmp_path / "baked.pt"
    argv = ["export", spec, "--input-shape", "1,4", "--format", "torchscript", "--out", str(out)]
    result = cli(*argv)
    assert result.code == 1 and not out.exists()
    assert result.err.strip().splitlines()[-1] == (
        f"prunekit export: error: torch.jit.load (torch {torch.__version__}) could not run the "
        "export at batch 1: RuntimeError: shape '[2, 3]' is invalid for input of size 3 (the "
        "batch size may be fixed in the graph: try --static-batch); the export was not kept"
    )
    fixed = cli(*argv, "--static-batch", "--json")
    assert fixed.code == 0, fixed.err
    assert fixed.json()["inputs"][0]["shape"] == [1, 4]


def test_force_replaces_only_an_export_of_the_same_format(cli: Any, tmp_path: Path) -> None:
    pt_file = tmp_path / "m.pt"
    _export(cli, "torchscript", pt_file, "--static-batch")
    refused = cli("export", *CNN, *SHAPE, "--format", "onnx", "--out", str(pt_file), "--force")
    assert refused.code == 1 and "it is not a prunekit onnx export file" in refused.err
    assert _export(cli, "torchscript", pt_file, "--force")["dynamic_batch"]  # replaced
    assert _listing(tmp_path) == ["m.pt"]


BAD_INPUTS = [
    (["--format", "tflite"], "invalid choice: 'tflite'"),
    (["--format", "onnx", "--out", "{user}"], "already exists; choose another --out or pass --force"),
    (["--format", "onnx", "--out", "{user}", "--force"],
     "refusing to replace {user}: it is not a prunekit onnx export file"),
    (["--format", "torchscript", "--out", "{user}", "--force"],
     "refusing to replace {user}: it is not a prunekit torchscript export file"),
    (["--format", "safetensors", "--out", "{user}"], "exists and is not a directory"),
    (["--format", "onnx", "--out", "{dir}"], "is a directory; give a file name"),
    (["--format", "torchscript", "--out", "{new}", "--opset", "17"],
     "--opset applies to --format onnx, not torchscript"),
    (["--format", "onnx", "--out", "{new}", "--opset", "3"], "--opset 3: ONNX operator sets run"),
    (["--format", "onnx", "--out", "{new}", "--atol", "nan"], "--atol must be a finite number"),
    (["--format", "onnx", "--out", "{new}", "--rtol", "-1"], "--rtol must be a finite number"),
    (["--format", "onnx", "--out", "{new}", "--dynamic-batch", "--static-batch"],
     "not allowed with argument"),
    # a second input the model does not take: the user's to fix, not an internal error
    (["--format", "torchscript", "--out", "{new}", "--input-shape", "1,1,8,8"],
     "the forward pass failed on inputs"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_inputs_fail_in_one_line_and_write_nothing(
    cli: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    user = tmp_path / "mine.onnx"
    user.write_text("the user's own file")
    (tmp_path / "dir").mkdir()
    where = {"user": str(user), "dir": str(tmp_path / "dir"), "new": str(tmp_path / "new.onnx")}
    argv = [a.format(**where) for a in argv]
    out = [] if "--out" in argv else ["--out", where["new"]]
    try:
        result = cli("export", *CNN, *SHAPE, *argv, *out)
        code, err = result.code, result.err
    except SystemExit as exc:  # argparse usage errors exit through SystemExit
        code, err = int(exc.code or 0), capsys.readouterr().err
    assert code == 1
    assert message.format(**where) in err
    assert len(err.strip().splitlines()) == 1
    assert user.read_text() == "the user's own file"
    assert _listing(tmp_path) == ["dir", "mine.onnx"]


def test_a_detector_refuses_a_dynamic_batch(cli: Any, tmp_path: Path) -> None:
    result = cli("export", "ssdlite320_mobilenet_v3_large", "--format", "onnx", "--out",
                 str(tmp_path / "d.onnx"), "--dynamic-batch")  # fmt: skip
    assert result.code == 1
    assert "takes a list of images (a torchvision detector)" in result.err
    assert "use --static-batch" in result.err


@pytest.mark.slow
def test_a_detector_exports_to_torchscript_by_scripting(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "det.pt"
    result = cli("export", "fasterrcnn_mobilenet_v3_large_320_fpn", "--format", "torchscript",
                 "--out", str(out), "--json")  # fmt: skip
    assert result.code == 0, result.err
    data = result.json()
    assert data["exporter"] == "torch.jit.script" and data["dynamic_batch"] is False
    assert [v["name"] for v in data["outputs"]] == [
        "output_0.boxes", "output_0.labels", "output_0.scores",
    ]  # fmt: skip
    assert "static batch of one image" in result.err
    if data["outputs"][0]["shape"][0] == 0:  # random weights: nothing found, shapes compared
        assert data["parity"]["notes"] == [
            "every output at batch 1 is empty (a detector that found nothing?): only their "
            "shapes were compared"
        ]
