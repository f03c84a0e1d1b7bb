"""Pruned Hugging Face encoders saved the Hugging Face way (prunekit.hf).

Tiny random BERT / RoBERTa / DistilBERT / ViT models get a different head count and FFN
width in each layer, are exported with ``save_pretrained_pruned``, and must give the pruned
in-memory model's outputs when loaded by transformers (``trust_remote_code``), by prunekit
(no remote code), in eager and SDPA attention, and through ONNX Runtime.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from _oracle import randomize
from prunekit.errors import PrunekitError
from prunekit.graph import trace_channels
from prunekit.hf import HFExportError, load_pruned, save_pretrained_pruned
from prunekit.inputs import KeywordTensorSpec, TokenSpec, as_example_inputs
from prunekit.pruning import prune

transformers = pytest.importorskip("transformers")

LAYERS, HEADS, HIDDEN, FFN, VOCAB, SEQ = 3, 4, 32, 48, 50, 10
HEAD_SIZE = HIDDEN // HEADS
KEEP_HEADS = [1, 3, 2]
KEEP_FFN = [20, 48, 7]
ATTENTION = ["eager", "sdpa"]


def _config(kind: str, **extra: Any) -> Any:
    if kind == "bert":
        return transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=32, **extra,
        )  # fmt: skip
    if kind == "roberta":
        return transformers.RobertaConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=130, **extra,
        )  # fmt: skip
    if kind == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
            max_position_embeddings=32, **extra,
        )  # fmt: skip
    return transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=HIDDEN,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN, **extra,
    )  # fmt: skip


BASE = {
    "bert": "BertModel",
    "roberta": "RobertaModel",
    "distilbert": "DistilBertModel",
    "vit": "ViTModel",
}
KINDS = list(BASE)


def _spec(kind: str) -> Any:
    return (
        KeywordTensorSpec("pixel_values", (1, 3, 16, 16))
        if kind == "vit"
        else TokenSpec(SEQ, VOCAB)
    )


def _inputs(kind: str) -> dict[str, torch.Tensor]:
    """A batch of two; for text, the second sequence is padded (so masks matter)."""
    gen = torch.Generator().manual_seed(1)
    if kind == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=gen)}
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, -3:] = 0
    return {"input_ids": torch.randint(0, VOCAB, (2, SEQ), generator=gen), "attention_mask": mask}


def _outputs(model: nn.Module, kind: str) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(**_inputs(kind))
    return [v for v in out.values() if isinstance(v, torch.Tensor)]


def _assert_same(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def _pruned(kind: str, cls: str | None = None, **extra: Any) -> nn.Module:
    """A model of ``kind`` with KEEP_HEADS heads and KEEP_FFN neurons in its layers."""
    model = getattr(transformers, cls or BASE[kind])(_config(kind, **extra))
    model = randomize(model).eval()
    example = _spec(kind).make(2)
    graph = trace_channels(model, example)
    exact = sorted((g for g in graph.prunable if g.exact), key=lambda g: g.name)
    heads = [g for g in exact if g.size == HEADS]
    ffn = [g for g in exact if g.size == FFN]
    assert len(heads) == len(ffn) == LAYERS, graph.summary()
    keep = {g.id: n for g, n in zip(heads, KEEP_HEADS, strict=True)}
    keep |= {g.id: n for g, n in zip(ffn, KEEP_FFN, strict=True)}
    prune(model, example, graph=graph, keep=keep)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[nn.Module, Path]]:
    """kind -> (pruned in-memory model, its export directory), made once per kind."""
    cache: dict[str, tuple[nn.Module, Path]] = {}

    def get(kind: str) -> tuple[nn.Module, Path]:
        if kind not in cache:
            model = _pruned(kind)
            directory = tmp_path_factory.mktemp(f"pruned-{kind}") / "model"
            save_pretrained_pruned(model, directory)
            cache[kind] = model, directory
        return cache[kind]

    return get


def _layer_attention(model: nn.Module) -> list[nn.Module]:
    return [
        m for m in model.modules() if type(m).__name__.endswith(("SelfAttention", "ViTAttention"))
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_export_writes_per_layer_config_safetensors_and_standalone_code(
    kind: str, exported: Any
) -> None:
    model, directory = exported(kind)
    names = sorted(p.name for p in directory.iterdir())
    assert names == [".prunekit-output.json", "config.json", "model.safetensors",
                     "modeling_prunekit.py"]  # fmt: skip
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == kind
    assert config["architectures"] == [BASE[kind]]
    assert config["prunekit_layer_heads"] == KEEP_HEADS
    assert config["prunekit_layer_intermediate"] == KEEP_FFN
    assert config["prunekit_head_size"] == HEAD_SIZE
    assert config["n_layers" if kind == "distilbert" else "num_hidden_layers"] == LAYERS
    assert "prunekit_kept_layers" not in config
    prefix = "DistilBert" if kind == "distilbert" else BASE[kind].removesuffix("Model")
    assert config["auto_map"]["AutoConfig"] == f"modeling_prunekit.Prunekit{prefix}Config"
    assert config["auto_map"]["AutoModel"] == f"modeling_prunekit.Prunekit{BASE[kind]}"
    # the modeling file is prunekit's module verbatim, and imports nothing but torch/transformers
    import prunekit.hf.modeling_prunekit as modeling

    code = (directory / "modeling_prunekit.py").read_text()
    assert code == Path(modeling.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"__future__", "typing", "torch", "transformers"}
    # unchanged by the export
    assert [
        getattr(m, "num_attention_heads", getattr(m, "n_heads", None))
        for m in _layer_attention(model)
    ] == KEEP_HEADS


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("kind", KINDS)
def test_auto_model_with_remote_code_reproduces_the_pruned_model(
    kind: str, attn: str, exported: Any
) -> None:
    model, directory = exported(kind)
    config = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=True)
    assert type(config).__name__.startswith("Prunekit")
    assert config.prunekit_layer_heads == KEEP_HEADS
    loaded = transformers.AutoModel.from_pretrained(
        directory, trust_remote_code=True, attn_implementation=attn
    ).eval()
    assert type(loaded).__name__ == f"Prunekit{BASE[kind]}"
    assert type(loaded).__module__.startswith("transformers_modules")
    assert loaded.config._attn_implementation == attn
    heads = [
        getattr(m, "num_attention_heads", getattr(m, "n_heads", None))
        for m in _layer_attention(loaded)
    ]
    assert heads == KEEP_HEADS
    _assert_same(_outputs(loaded, kind), _outputs(model, kind))


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("kind", KINDS)
def test_prunekit_loader_without_remote_code(kind: str, attn: str, exported: Any) -> None:
    model, directory = exported(kind)
    loaded = load_pruned(directory, attn_implementation=attn)
    assert type(loaded).__module__ == "prunekit.hf.modeling_prunekit"
    assert loaded.config._attn_implementation == attn and not loaded.training
    _assert_same(_outputs(loaded, kind), _outputs(model, kind))


@pytest.mark.parametrize("kind", KINDS)
def test_resolver_loads_the_export_without_trust_remote_code(kind: str, exported: Any) -> None:
    import prunekit

    model, directory = exported(kind)
    loaded = prunekit.load_model(str(directory))
    assert loaded.source == "huggingface" and loaded.recipe["class"] == BASE[kind]
    _assert_same(_outputs(loaded.model, kind), _outputs(model, kind))
    with torch.no_grad():
        loaded.input_spec.make(1).call(loaded.model)


def test_loaded_export_saves_as_artifact_and_prunes_again(exported: Any, tmp_path: Path) -> None:
    import prunekit
    from prunekit.artifact import load, save

    model, directory = exported("bert")
    loaded = prunekit.load_model(str(directory))
    save(loaded.model, tmp_path / "artifact", recipe=loaded.recipe, input_spec=loaded.input_spec)
    rebuilt, _ = load(tmp_path / "artifact")
    _assert_same(_outputs(rebuilt, "bert"), _outputs(model, "bert"))
    # prune the loaded export once more (layer 1: 3 -> 2 heads), export it again
    example = loaded.input_spec.make(2)
    graph = trace_channels(loaded.model, example)
    (group,) = [g for g in graph.prunable if g.exact and g.size == 3]
    prune(loaded.model, example, graph=graph, keep={group.id: 2})
    save_pretrained_pruned(loaded.model, tmp_path / "again")
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["prunekit_layer_heads"] == [1, 2, 2]
    _assert_same(_outputs(load_pruned(tmp_path / "again"), "bert"), _outputs(loaded.model, "bert"))


def test_resolver_still_loads_plain_directories_and_guards_remote_code(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    import shutil

    import prunekit
    from prunekit.errors import ModelSourceError

    plain = prunekit.load_model(str(tiny_bert_dir))
    assert type(plain.model).__name__ == "BertModel" and plain.recipe["class"] == "BertModel"
    custom = tmp_path / "custom"
    shutil.copytree(tiny_bert_dir, custom)
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (custom / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError, match="--trust-remote-code"):
        prunekit.load_model(str(custom))


def test_cli_analyze_counts_the_pruned_sizes(cli: Any, exported: Any) -> None:
    _, directory = exported("bert")
    result = cli("analyze", str(directory), "--seq-len", "8", "--json")
    assert result.code == 0, result.err
    s = 8
    macs = sum(
        4 * s * HIDDEN * h * HEAD_SIZE + 2 * s * s * h * HEAD_SIZE + 2 * s * HIDDEN * f
        for h, f in zip(KEEP_HEADS, KEEP_FFN, strict=True)
    )
    assert result.json()["macs"] == macs + HIDDEN * HIDDEN  # + the pooler


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_export_of_the_loaded_model(kind: str, exported: Any, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from prunekit.measure.backends.ort import export_onnx

    model, directory = exported(kind)
    loaded = load_pruned(directory)
    inputs = _inputs(kind)
    export_onnx(loaded, as_example_inputs(inputs), tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    got = session.run(None, feeds)
    expected = _outputs(model, kind)
    np.testing.assert_allclose(got[0], expected[0].numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_dropped_layers_round_trip(kind: str, tmp_path: Path) -> None:
    model = _pruned(kind)
    holder = {"bert": "encoder", "roberta": "encoder", "distilbert": "transformer", "vit": None}[
        kind
    ]
    parent = getattr(model, holder) if holder else model
    name = "layer" if holder else "layers"
    layers = getattr(parent, name)
    setattr(parent, name, nn.ModuleList([layers[0], layers[2]]))
    # BERT and RoBERTa layers know their index; the others are told
    kept = None if kind in ("bert", "roberta") else [0, 2]
    save_pretrained_pruned(model, tmp_path / "m", kept_layers=kept)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["n_layers" if kind == "distilbert" else "num_hidden_layers"] == 2
    assert config["prunekit_kept_layers"] == [0, 2]
    assert config["prunekit_original_num_layers"] == LAYERS
    assert config["prunekit_layer_heads"] == [KEEP_HEADS[0], KEEP_HEADS[2]]
    assert config["prunekit_layer_intermediate"] == [KEEP_FFN[0], KEEP_FFN[2]]
    expected = _outputs(model, kind)
    remote = transformers.AutoModel.from_pretrained(tmp_path / "m", trust_remote_code=True)
    _assert_same(_outputs(remote.eval(), kind), expected)
    local = load_pruned(tmp_path / "m")
    _assert_same(_outputs(local, kind), expected)
    # exporting the loaded model again keeps the original layer indices
    save_pretrained_pruned(local, tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["prunekit_kept_layers"] == [0, 2]
    assert again["prunekit_layer_heads"] == config["prunekit_layer_heads"]


@pytest.mark.parametrize(
    ("kind", "cls", "auto", "width"),
    [
        ("bert", "BertForSequenceClassification", "AutoModelForSequenceClassification", 3),
        ("distilbert", "DistilBertForSequenceClassification", "AutoModelForSequenceClassification", 3),
        ("vit", "ViTForImageClassification", "AutoModelForImageClassification", 3),
        ("roberta", "RobertaForMaskedLM", "AutoModelForMaskedLM", VOCAB),
    ],
)  # fmt: skip
def test_task_heads_round_trip(kind: str, cls: str, auto: str, width: int, tmp_path: Path) -> None:
    model = _pruned(kind, cls, num_labels=3)
    save_pretrained_pruned(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == [cls] and auto in config["auto_map"]
    expected = _outputs(model, kind)
    assert expected[0].shape[-1] == width
    remote = getattr(transformers, auto).from_pretrained(tmp_path / "m", trust_remote_code=True)
    _assert_same(_outputs(remote.eval(), kind), expected)
    local = load_pruned(tmp_path / "m")
    assert type(local).__name__ == f"Prunekit{cls}"
    _assert_same(_outputs(local, kind), expected)
    if auto == "AutoModelForMaskedLM":  # the decoder is still tied to the word embeddings
        for loaded in (remote, local):
            assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight


def test_unpruned_model_round_trips(tmp_path: Path) -> None:
    model = randomize(transformers.ViTModel(_config("vit"))).eval()
    save_pretrained_pruned(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["prunekit_layer_heads"] == [HEADS] * LAYERS
    assert config["prunekit_layer_intermediate"] == [FFN] * LAYERS
    remote = transformers.AutoModel.from_pretrained(tmp_path / "m", trust_remote_code=True)
    _assert_same(_outputs(remote.eval(), "vit"), _outputs(model, "vit"))


def test_existing_directory_is_refused_unless_forced(tmp_path: Path, exported: Any) -> None:
    model, _ = exported("bert")
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(PrunekitError, match="already exists"):
        save_pretrained_pruned(model, target)
    with pytest.raises(PrunekitError, match=r"refusing to replace.*keep\.txt"):
        save_pretrained_pruned(model, target, force=True)  # never over the user's files
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    (target / "keep.txt").unlink()
    save_pretrained_pruned(model, target)  # an empty directory is fine
    save_pretrained_pruned(model, target, force=True)  # its own previous export is replaced
    assert (target / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory left behind


def test_unsupported_model_class_is_named(tmp_path: Path) -> None:
    with pytest.raises(HFExportError, match=r"torch\.nn\.modules\.container\.Sequential"):
        save_pretrained_pruned(nn.Sequential(nn.Linear(2, 2)), tmp_path / "a")
    gpt2 = transformers.GPT2Model(
        transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=20)
    )
    with pytest.raises(HFExportError, match=r"GPT2Model; it exports these .*BertModel"):
        save_pretrained_pruned(gpt2, tmp_path / "b")
    assert not any(tmp_path.iterdir())


def test_sizes_the_config_cannot_describe_are_refused(tmp_path: Path) -> None:
    model = _pruned("bert")
    model.pooler.dense = nn.Linear(HIDDEN, HIDDEN // 2)  # as if a hidden size had been pruned
    with pytest.raises(HFExportError, match=r"pooler\.dense\.weight has shape \(16, 32\)"):
        save_pretrained_pruned(model, tmp_path / "a")
    assert not any(tmp_path.iterdir())


def test_stock_loading_without_remote_code_fails_loudly(exported: Any) -> None:
    _, directory = exported("bert")
    with pytest.raises(Exception, match=r"(?i)size|shape"):
        transformers.AutoModel.from_pretrained(directory)


def test_load_pruned_refuses_other_directories(tmp_path: Path, tiny_bert_dir: Path) -> None:
    with pytest.raises(HFExportError, match="not written by prunekit"):
        load_pruned(tiny_bert_dir)
    with pytest.raises(HFExportError, match=r"config\.json is missing"):
        load_pruned(tmp_path)


def test_tokenizer_and_sentence_transformers_files_are_copied(
    tmp_path: Path, exported: Any
) -> None:
    model, _ = exported("bert")
    source = tmp_path / "source"
    source.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(VOCAB - 5))]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(source)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (source / "modules.json").write_text(json.dumps(modules))
    (source / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": SEQ}))
    (source / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": HIDDEN, "pooling_mode_mean_tokens": True}
    (source / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (source / "config.json").write_text("{}")  # the source's own model files are not copied
    (source / "training_log.txt").write_text("not copied")
    save_pretrained_pruned(model, tmp_path / "m", tokenizer_dir=source)
    names = {p.name for p in (tmp_path / "m").iterdir()}
    tokenizer_files = {
        p.name for p in source.iterdir() if p.name.startswith(("tokenizer", "vocab"))
    }
    assert tokenizer_files and tokenizer_files <= names
    assert {"modules.json", "sentence_bert_config.json"} <= names
    assert "training_log.txt" not in names
    assert (tmp_path / "m" / "1_Pooling" / "config.json").is_file()
    assert (
        json.loads((tmp_path / "m" / "config.json").read_text())["prunekit_layer_heads"]
        == KEEP_HEADS
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "m")
    assert tokenizer("w1 w2")["input_ids"] == [2, 6, 7, 3]
    # sentence-transformers: the pruned encoder + mean pooling of the copied 1_Pooling
    st = pytest.importorskip("sentence_transformers")
    encoder = st.SentenceTransformer(str(tmp_path / "m"), trust_remote_code=True, device="cpu")
    texts = ["w1 w2 w3", "w4"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    torch.testing.assert_close(
        encoder.encode(texts, convert_to_tensor=True), (hidden * mask).sum(1) / mask.sum(1)
    )
    with pytest.raises(HFExportError, match="no tokenizer"):
        save_pretrained_pruned(model, tmp_path / "n", tokenizer_dir=source / "1_Pooling")
