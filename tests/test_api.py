"""The front door: configs round-trip and refuse typos, in-place verbs return None and change
the model, save/load rebuild bit-identically from every kind of source."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.api._config import ConfigError
from prunekit.errors import ModelSourceError

CONFIGS = [
    pk.RecoverConfig(epochs=3, seconds=5.0, patience=2, kd_temperature=2.0),
    pk.TargetPruning(macs=0.4, round_to=4, ignore=("features.0",)),
    pk.PlanConfig(round_to=8, protect=("classifier",)),
    pk.SensitivityConfig(samples=16, ratios=(0.25, 0.5)),
    pk.TransformerPruning(heads=0.25, ffn=0.5, layers=1, head_allocation="uniform"),
    pk.StructuredPruning(ratio=0.3, ratios={"features.1": 0.5}, round_to=8),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_configs_round_trip_through_plain_data(config: object) -> None:
    data = config.to_dict()  # type: ignore[attr-defined]
    import json

    assert json.loads(json.dumps(data)) == data  # JSON-able
    assert type(config).from_dict(data) == config  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: pk.RecoverConfig.from_dict({"epoch": 2}),
            r"unknown setting 'epoch' \(did you mean 'epochs'\?\)",
        ),
        (lambda: pk.RecoverConfig(epochs=0), "epochs must be a positive integer"),
        (lambda: pk.RecoverConfig(kd_alpha=1.5), "kd_alpha must be a number >= 0 and <= 1"),
        (lambda: pk.RecoverConfig(amp="fp8"), "amp must be one of auto, off, bf16, fp16"),
        (lambda: pk.TargetPruning(macs=0), "macs must be a number > 0"),
        (lambda: pk.SensitivityConfig(ratios=(1.0,)), "ratios must be a number"),
        (lambda: pk.PlanPruning(plan=3), "needs plan="),
    ],
)
def test_configs_are_checked_when_built(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        build()


def _mobile() -> pk.LoadedModel:
    return pk.load("prunekit.nn.mobile_cnn:MobileCNN", input_shapes=[(1, 1, 28, 28)])


def test_prune_changes_the_model_in_place_and_returns_none() -> None:
    loaded = _mobile()
    model, example = loaded.model, loaded.input_spec.make(1)
    before = sum(p.numel() for p in model.parameters())
    record: dict = {}
    assert pk.prune_(model, example, pk.TargetPruning(macs=0.5), record=record) is None
    assert sum(p.numel() for p in model.parameters()) < before
    assert record["kept"]["macs"] == pytest.approx(0.5, abs=0.01)
    assert model(example.args[0]).shape == (1, 10)


def test_structured_ratio_equals_the_engine_it_wraps_on_an_independent_count() -> None:
    loaded = _mobile()
    model, example = loaded.model, loaded.input_spec.make(1)
    pk.prune_(model, example, pk.StructuredPruning(ratio=0.5))
    # the stem's 32 output channels lose half: 16 remain (counted on the module itself)
    assert model.features[0][0].out_channels == 16


def test_plan_then_plan_pruning_meets_the_target() -> None:
    loaded = _mobile()
    model, example = loaded.model, loaded.input_spec.make(1)
    data = pk.load_data("digits")  # any images: calibration only needs inputs
    plan = pk.plan(
        model,
        example,
        "macs=0.6",
        data=None,
        config=pk.PlanConfig(round_to=4),
        sensitivity=pk.sensitivity(
            model, example, config=pk.SensitivityConfig(samples=4, ratios=(0.5,), blocks=False)
        ),
    )
    assert plan.achieved["macs_fraction"] <= 0.6 + 1e-9
    record: dict = {}
    pk.prune_(model, example, pk.PlanPruning(plan=plan), record=record)
    assert record["kept"]["macs"] == pytest.approx(plan.achieved["macs_fraction"])
    del data


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_infers_the_recipe_of_a_callable_source(tmp_path: Path) -> None:
    loaded = _mobile()
    pk.prune_(loaded.model, loaded.input_spec.make(1), pk.StructuredPruning(ratio=0.3))
    pk.save(loaded.model, tmp_path / "a")  # no recipe dict, no source: pk.load remembered it
    again = pk.load(tmp_path / "a")
    assert _same_weights(loaded.model, again.model)
    # and an artifact source: load the artifact, save it again, same weights
    pk.save(again.model, tmp_path / "b")
    assert _same_weights(again.model, pk.load(tmp_path / "b").model)


def test_save_with_an_explicit_torchvision_source(tmp_path: Path) -> None:
    loaded = pk.load("resnet18", model_kwargs={"num_classes": 7})
    model = loaded.model
    pk.prune_(model, loaded.input_spec.make(1), pk.StructuredPruning(ratio=0.5))
    pk.save(model, tmp_path / "r", source=loaded)
    assert _same_weights(model, pk.load(tmp_path / "r").model)


def test_save_of_a_huggingface_model(tmp_path: Path, tiny_bert_dir: Path) -> None:
    loaded = pk.load(str(tiny_bert_dir))
    pk.save(loaded.model, tmp_path / "h")
    assert _same_weights(loaded.model, pk.load(tmp_path / "h").model)


def test_a_model_with_tied_weights_loads_back_tied(tmp_path: Path, tiny_mlm_dir: Path) -> None:
    """BertForMaskedLM's decoder shares the word embeddings; safetensors stores the tensor
    once, and loading puts the tie back (``to_empty`` had given each holder its own)."""
    loaded = pk.load(str(tiny_mlm_dir))
    pk.save(loaded.model, tmp_path / "a")
    again = pk.load(tmp_path / "a").model
    assert again.cls.predictions.decoder.weight is again.bert.embeddings.word_embeddings.weight
    tokens = torch.randint(0, 64, (2, 8))
    assert torch.equal(again(tokens).logits, loaded.model.eval()(tokens).logits)


def test_save_of_an_unknown_model_says_how_to_fix() -> None:
    with pytest.raises(ModelSourceError, match=r"load it with pk.load\(...\) or pass source="):
        pk.save(torch.nn.Linear(2, 2), "never-written")
    assert not Path("never-written").exists()


def test_evaluate_names_the_split_and_its_size() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    result = pk.evaluate(model, "digits")
    assert result["split"] == "eval" and result["samples"] == 450
    assert result["data"]["split"]["eval_from"].startswith("a stratified 25%")
    # an independent count of top-1 on the same 450 images
    data = pk.load_data("digits")
    x = torch.stack([x for x, _ in data.eval])
    y = torch.tensor([int(y) for _, y in data.eval])
    with torch.no_grad():
        expected = (model(x).argmax(1) == y).float().mean().item()
    assert result["top1"] == pytest.approx(expected)


def test_transformer_pruning_by_config_type(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from transformers import BertTokenizerFast

    loaded = pk.load(str(tiny_bert_dir))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(59)]])
    )
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    sentences = [" ".join(f"w{(i * 7 + j) % 59}" for j in range(5 + i % 4)) for i in range(40)]
    example = dict(tokenizer(sentences[0], return_tensors="pt"))
    record: dict = {}
    out = pk.prune_(loaded.model, example, pk.TransformerPruning(heads=0.5), data=sentences,
                    tokenizer=tokenizer, record=record)  # fmt: skip
    assert out is None
    heads = [layer.attention.self.num_attention_heads for layer in loaded.model.encoder.layer]
    assert sum(heads) == 4  # half of 2 layers x 4 heads, allocated globally
    assert record["after"]["params"] < record["before"]["params"]


def test_recover_and_evaluate_a_segmentation_model(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):  # class 1 where the image is bright, 0 where dark: learnable per pixel
        mask = (rng.random((8, 8)) > 0.5).astype(np.uint8)
        image = np.where(mask[..., None] == 1, 220, 30).astype(np.uint8).repeat(3, axis=2)
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{i}.png")
    model = torch.nn.Conv2d(3, 2, 1)
    torch.nn.init.zeros_(model.weight)
    example = torch.zeros(1, 3, 8, 8)
    before = pk.evaluate(model, str(root), example=example)
    record: dict = {}
    pk.recover_(model, str(root), pk.RecoverConfig(epochs=15, lr=0.5, batch_size=4),
                example=example, record=record)  # fmt: skip
    after = pk.evaluate(model, str(root), example=example)
    assert after["task"] == "segmentation" and after["samples"] == 4  # 20% of 20 held out
    assert before["miou"] < 0.5 < 0.95 < after["miou"]
    assert record["validation"]["metric"] == "miou"


@pytest.mark.train
@pytest.mark.slow
def test_compress_for_mcu_fits_the_budget_and_keeps_accuracy() -> None:
    from prunekit.mcu.compress import Recipe, integer_accuracy, train_dense
    from prunekit.mcu.datasets import load_splits

    splits = load_splits("digits")
    recipe = Recipe(dense_epochs=30, prune_epochs=15, finetune_epochs=8, sharing_epochs=4,
                    batch_size=32, patience=10, shift_pixels=0)  # fmt: skip
    dense = train_dense([64, 64, 10], splits, recipe)
    before = [p.detach().clone() for p in dense.parameters()]
    result = pk.compress_for_mcu(dense, "digits", "3KB", recipe=recipe, value_bits=(8,))
    best = result.best
    assert best.bytes <= 3 * 1024  # counted on the encoded weights, not estimated
    test = integer_accuracy(best.qmodel, splits.test_x, splits.test_y)  # held-out test split
    assert test > 0.85
    assert all(torch.equal(a, b) for a, b in zip(before, dense.parameters(), strict=True))
