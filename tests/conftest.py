"""Shared fixtures: run the CLI in-process, and tiny models saved where the resolver finds them.

Also the test lanes. Every test gets a lane marker from its file or its source, so test files
need no markers of their own:

* ``zoo``: whole torchvision model zoos (the pruning oracle over every model, published MACs);
* ``train``: tests that train or fine-tune (recovery, distillation, the MCU pipeline);
* ``dist``: multi-process (distributed) training;
* ``onnx``: tests that run ONNX Runtime;
* ``gpu``: tests that need CUDA (skipped without it);
* ``slow`` (set by the test files): a few seconds or more each.

A plain ``python -m pytest`` runs the fast lane: everything but zoo, train, dist and slow.
``--all-lanes`` runs everything (CI does), an explicit ``-m`` expression picks lanes itself
(``-m zoo``, ``-m "not gpu"``), and a test file named on the command line runs whole.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
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


# --- lanes ---------------------------------------------------------------------------------------

LANES_BY_FILE = {
    "zoo": ("test_prune_zoo.py", "test_macs_zoo.py", "test_prune_vision_tasks.py"),
    "train": (
        "test_recovery*.py",
        "test_embedding_distill.py",
        "test_mcu_pipeline.py",
        "test_distributed*.py",
    ),
    "dist": ("test_distributed*.py",),
}
# single tests in other files that run a training command (mcu, demo) to completion
LANES_BY_TEST = {
    "train": (
        "test_safety_outputs.py::test_force_replaces_only_its_own_previous_output[mcu]",
        "test_safety_outputs.py::test_force_replaces_only_its_own_previous_output[demo]",
        "test_safety_outputs.py::test_demo_rerun_replaces_its_output_but_never_a_user_file",
    ),
}
# lanes a plain ``python -m pytest`` leaves out
SLOW_LANES = ("zoo", "train", "dist", "slow")
_CUDA_SOURCE = re.compile(r"\.cuda\(|device=[\"']cuda")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--all-lanes",
        action="store_true",
        help="run every lane (zoo, train, dist, slow too), not only the fast one",
    )


def _source(item: pytest.Item) -> str:
    function = getattr(item, "function", None)
    try:
        return inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        return ""


@functools.cache
def _module_source(path: Path) -> str:
    return path.read_text() if path.suffix == ".py" else ""


def lanes_of(item: pytest.Item) -> set[str]:
    """The lanes of one test: by its file's name, its source, its parameters and its skips."""
    lanes = {
        lane
        for lane, patterns in LANES_BY_FILE.items()
        if any(item.path.match(pattern) for pattern in patterns)
    }
    name = f"{item.path.name}::{item.name}"
    lanes |= {lane for lane, tests in LANES_BY_TEST.items() if name in tests}
    source = _source(item)
    module_source = _module_source(item.path)
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "backend" in params:  # a test run once per backend: only its onnxruntime run is onnx
        uses_onnx = params["backend"] == "onnxruntime"
    else:
        uses_onnx = "onnxruntime" in source or bool(
            re.search(r"^(import|from) onnxruntime", module_source, flags=re.M)
        )
    if uses_onnx:
        lanes.add("onnx")
    skips_without_cuda = any(
        "cuda" in str(mark.kwargs.get("reason", "")).lower() for mark in item.iter_markers("skipif")
    )
    if skips_without_cuda or (_CUDA_SOURCE.search(source) and "is_available()" not in source):
        lanes.add("gpu")
    return lanes


def _named_files(config: pytest.Config) -> set[Path]:
    """Test files named on the command line (not folders): those run whole, every lane."""
    files = set()
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::")[0])
        if path.is_file():
            files.add(path.resolve())
    return files


@pytest.hookimpl(tryfirst=True)  # mark before pytest's own -m selection runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for lane in sorted(lanes_of(item)):
            item.add_marker(lane)
    if config.getoption("--all-lanes") or config.getoption("markexpr"):
        return
    named = _named_files(config)
    keep, drop = [], []
    for item in items:
        skipped = not named.intersection({item.path.resolve()}) and any(
            item.get_closest_marker(lane) for lane in SLOW_LANES
        )
        (drop if skipped else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config: pytest.Config) -> str:
    if config.getoption("--all-lanes"):
        return "lanes: all"
    if config.getoption("markexpr"):
        return f"lanes: -m {config.getoption('markexpr')!r}"
    return f"lanes: fast (leaves out {', '.join(SLOW_LANES)}; --all-lanes runs everything)"


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


@pytest.fixture
def tiny_mlm_dir(tmp_path: Path) -> Path:
    """A tiny BertForMaskedLM: its decoder shares the word embeddings (a tied weight)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=48,
                                     max_position_embeddings=40)  # fmt: skip
    path = tmp_path / "mlm"
    transformers.BertForMaskedLM(config).save_pretrained(path)
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
