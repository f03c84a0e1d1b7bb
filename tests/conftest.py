"""Shared fixtures: run the CLI in-process, and tiny models saved where the resolver finds them."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from prunekit.cli.main import main

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per worker: OpenMP threads of parallel workers spinning on the same
    # cores slow every test down by an order of magnitude
    torch.set_num_threads(1)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    def run(*argv: str) -> CliResult:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def small_cnn(num_classes=10):
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(8, num_classes),
        )

    def mlp():
        return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))

    class TokenModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(100, 16)
            self.head = nn.Linear(16, 2)

        def forward(self, ids):
            return self.head(self.embed(ids).mean(1))

    def not_a_model():
        return 42

    def broken():
        raise RuntimeError("weights file missing")

    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def user_module(tmp_path: Path) -> Iterator[str]:
    """A module ``prunekit_test_models`` importable by name, and its file path."""
    (tmp_path / "prunekit_test_models.py").write_text(USER_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        yield str(tmp_path / "prunekit_test_models.py")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("prunekit_test_models", None)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        architectures=["BertModel"],
    )
    path = tmp_path_factory.mktemp("tiny-bert")
    transformers.BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=48,
    )
    path = tmp_path_factory.mktemp("tiny-vit")
    transformers.ViTModel(config).save_pretrained(path)
    return path
