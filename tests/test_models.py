"""The model resolver: every source kind, its default inputs, and its error messages."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch

from prunekit.errors import ModelForwardError, ModelSourceError
from prunekit.inputs import ImageListSpec, KeywordTensorSpec, TensorSpec, TokenSpec
from prunekit.models import load_model


def test_torchvision_classifier_uses_the_weights_crop_size() -> None:
    loaded = load_model("inception_v3")
    assert loaded.source == "torchvision" and loaded.task == "classification"
    assert loaded.input_spec == TensorSpec(((1, 3, 299, 299),))
    assert not loaded.model.training


def test_torchvision_detector_takes_a_list_of_images_and_no_backbone_download() -> None:
    # weights_backbone=None is passed: the default would try to download ImageNet weights.
    loaded = load_model("ssdlite320_mobilenet_v3_large")
    assert loaded.task == "detection"
    assert isinstance(loaded.input_spec, ImageListSpec)
    images = loaded.input_spec.make(2).args[0]
    assert isinstance(images, list) and len(images) == 2


def test_segmentation_and_video_defaults() -> None:
    assert load_model("lraspp_mobilenet_v3_large").input_spec == TensorSpec(((1, 3, 520, 520),))
    assert load_model("r3d_18").input_spec == TensorSpec(((1, 3, 16, 112, 112),))


def test_input_shape_override() -> None:
    loaded = load_model("resnet18", input_shapes=[(1, 3, 64, 64)])
    assert loaded.input_spec.make(4).args[0].shape == (4, 3, 64, 64)
    assert loaded.input_note == "from --input-shape"


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(ModelSourceError, match="Did you mean: mobilenet_v2"):
        load_model("mobilenetv2")


def test_weights_download_failure_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(
        ModelSourceError,
        match=r"could not download weights 'DEFAULT' for resnet18 from https://\S+resnet18",
    ):
        load_model("resnet18", weights="DEFAULT")


def test_invalid_weights_name_lists_valid_ones() -> None:
    with pytest.raises(ModelSourceError, match="IMAGENET1K_V1"):
        load_model("resnet18", weights="NOPE")


def test_module_callable(user_module: str) -> None:
    loaded = load_model("prunekit_test_models:small_cnn", model_kwargs={"num_classes": 3})
    assert loaded.source == "callable"
    assert loaded.input_spec == TensorSpec(((1, 3, 224, 224),))
    assert "guessed from the first layer 0 (Conv2d)" in loaded.input_note
    assert loaded.model(loaded.input_spec.make(2).args[0]).shape == (2, 3)


def test_file_callable_and_guesses(user_module: str) -> None:
    mlp = load_model(f"{user_module}:mlp")
    assert mlp.input_spec == TensorSpec(((1, 20),))
    tokens = load_model(f"{user_module}:TokenModel")
    ids = tokens.input_spec.make(3).args[0]
    assert ids.dtype == torch.int64 and ids.shape == (3, 128) and int(ids.max()) < 100
    shaped = load_model(f"{user_module}:TokenModel", input_shapes=[(1, 7)])
    assert shaped.input_spec.make(1).args[0].dtype == torch.int64


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_pkg_xyz:build", "cannot import module 'no_such_pkg_xyz'"),
        (
            "prunekit_test_models:missing",
            "has no attribute 'missing'; callables there: .*small_cnn",
        ),
        ("prunekit_test_models:not_a_model", "returned int, expected a torch.nn.Module"),
        ("prunekit_test_models:broken", "raised RuntimeError: weights file missing"),
        ("prunekit_test_models:NOT_CALLABLE", "is a int, not a callable"),
        ("./does/not/exist.py:build", "no such file"),
    ],
)
def test_callable_errors(user_module: str, spec: str, message: str) -> None:
    with pytest.raises(ModelSourceError, match=message):
        load_model(spec)


def test_paths_that_are_not_models(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="no such file or directory"):
        load_model(str(tmp_path / "missing_dir"))
    with pytest.raises(ModelSourceError, match="not a model directory"):
        load_model(str(tmp_path))
    (tmp_path / "model.pt").write_bytes(b"not really")
    with pytest.raises(ModelSourceError, match="does not unpickle"):
        load_model(str(tmp_path / "model.pt"))


def test_huggingface_text_directory(tiny_bert_dir: Path) -> None:
    loaded = load_model(str(tiny_bert_dir))
    assert loaded.source == "huggingface" and loaded.task == "text"
    assert loaded.input_spec == TokenSpec(40, 64)  # capped at max_position_embeddings
    assert load_model(str(tiny_bert_dir), seq_len=16).input_spec == TokenSpec(16, 64)
    with pytest.raises(ModelSourceError, match="exceeds the model's max_position_embeddings"):
        load_model(str(tiny_bert_dir), seq_len=41)
    out = loaded.input_spec.make(2).call(loaded.model)
    assert out.last_hidden_state.shape == (2, 40, 32)


def test_huggingface_vision_directory(tiny_vit_dir: Path) -> None:
    loaded = load_model(str(tiny_vit_dir))
    assert loaded.input_spec == KeywordTensorSpec("pixel_values", (1, 3, 32, 32))


def test_huggingface_remote_code_needs_consent(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    target = tmp_path / "remote"
    shutil.copytree(tiny_bert_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_x.XModel"}
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError, match="--trust-remote-code"):
        load_model(str(target))


def test_model_without_guessable_input(user_module: str, tmp_path: Path) -> None:
    path = tmp_path / "odd.py"
    path.write_text("from torch import nn\ndef build():\n    return nn.Sequential(nn.ReLU())\n")
    with pytest.raises(ModelForwardError, match="--input-shape"):
        load_model(f"{path}:build")
