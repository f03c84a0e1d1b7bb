"""Attention at head granularity: Hugging Face BERT / DistilBERT / ViT and nn.MultiheadAttention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from _oracle import assert_exact, assert_runs_and_trains, choose, outputs, pruned_copy, randomize
from prunekit.artifact import load, save
from prunekit.graph import trace_channels
from prunekit.inputs import KeywordTensorSpec, TensorSpec, TokenSpec
from prunekit.nn import PrunedMultiheadAttention
from prunekit.pruning import prune

transformers = pytest.importorskip("transformers")

LAYERS, HEADS, HIDDEN, FFN = 2, 4, 32, 48


def _bert(attn: str) -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=32, attn_implementation=attn,
    )  # fmt: skip
    return transformers.BertModel(config)


def _distilbert(attn: str) -> nn.Module:
    config = transformers.DistilBertConfig(
        vocab_size=50, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
        max_position_embeddings=32, attn_implementation=attn,
    )  # fmt: skip
    return transformers.DistilBertModel(config)


def _vit(attn: str) -> nn.Module:
    config = transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=FFN, attn_implementation=attn,
    )  # fmt: skip
    return transformers.ViTModel(config)


MODELS = {
    "bert": (_bert, TokenSpec(10, 50)),
    "distilbert": (_distilbert, TokenSpec(10, 50)),
    "vit": (_vit, KeywordTensorSpec("pixel_values", (1, 3, 16, 16))),
}


def _model(kind: str, attn: str) -> tuple[nn.Module, object]:
    build, spec = MODELS[kind]
    return randomize(build(attn)).double().eval(), spec


def _example(spec: object) -> object:
    return spec.make(2).to("cpu", torch.float64)  # type: ignore[attr-defined]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_heads_and_ffn_are_exact_groups(kind: str, attn: str) -> None:
    model, spec = _model(kind, attn)
    example = _example(spec)
    graph = trace_channels(model, example)
    assert not graph.rule_errors and not graph.unsupported, graph.summary()
    exact_sizes = sorted(g.size for g in graph.prunable if g.exact)
    assert exact_sizes == [HEADS] * LAYERS + [FFN] * LAYERS  # one head group + one FFN per layer
    # the residual stream is what the model returns (last_hidden_state): never pruned
    stream = [g for g in graph.groups if g.size == HIDDEN and not g.prunable]
    assert stream and all("model output" in " ".join(g.blocked_reasons) for g in stream)
    assert_exact(model, example, graph, None)
    assert_exact(model, example, graph, 0.5)
    pruned = pruned_copy(model, choose(graph, model, 0.5, exact_only=False))
    assert_runs_and_trains(pruned, example, outputs(model, example))


@pytest.mark.parametrize("kind", list(MODELS))
def test_pruned_hugging_face_model_describes_itself_and_round_trips(
    kind: str, tmp_path: Path
) -> None:
    model, spec = _model(kind, "sdpa")
    example = _example(spec)
    prune(model, example, ratio=0.5)
    attention = [
        m for m in model.modules() if type(m).__name__.endswith(("SelfAttention", "ViTAttention"))
    ]
    assert len(attention) == LAYERS
    for m in attention:
        heads = getattr(m, "num_attention_heads", getattr(m, "n_heads", None))
        assert heads == HEADS // 2
    recipe = {
        "kind": "huggingface",
        "class": type(model).__name__,
        "config": model.config.to_dict(),
    }
    save(model, tmp_path / "a", recipe=recipe, input_spec=spec)
    loaded, _ = load(tmp_path / "a")
    assert all(
        torch.equal(a, b)
        for a, b in zip(outputs(loaded, example), outputs(model, example), strict=True)
    )


@pytest.mark.parametrize("builder", ["mha_batch_first", "mha_seq_first"])
def test_multihead_attention_head_pruning(builder: str, tmp_path: Path) -> None:
    import _test_models

    model = randomize(getattr(_test_models, builder)()).double().eval()
    spec = TensorSpec(((2, 5, 8),))
    example = spec.make(2).to("cpu", torch.float64)
    graph = trace_channels(model, example)
    assert sorted(g.size for g in graph.prunable if g.exact) == [4, 64]  # heads, MLP hidden
    assert_exact(model, example, graph, None)
    assert_exact(model, example, graph, 0.5)
    reference = outputs(model, example)
    pruned = pruned_copy(model, choose(graph, model, 0.5, exact_only=False))
    assert isinstance(pruned.attn, PrunedMultiheadAttention)
    assert pruned.attn.num_heads == 2 and pruned.attn.embed_dim == 16
    assert_runs_and_trains(pruned, example, reference)
    save(
        pruned,
        tmp_path / "a",
        recipe={"kind": "callable", "spec": f"_test_models:{builder}"},
        input_spec=spec,
    )
    loaded, _ = load(tmp_path / "a", trust_code=True, say=lambda _: None)  # the test's own code
    assert type(loaded.attn) is PrunedMultiheadAttention
    assert torch.equal(outputs(loaded, example)[0], outputs(pruned, example)[0])


def test_pruned_mha_matches_torch_with_masks_and_weights() -> None:
    """The drop-in forward agrees with nn.MultiheadAttention on the options it supports."""
    torch.manual_seed(0)
    batch, length, dim = 3, 5, 16
    for batch_first in (True, False):
        for bias_kv in (False, True):
            ref = (
                nn.MultiheadAttention(dim, 4, batch_first=batch_first, add_bias_kv=bias_kv)
                .double()
                .eval()
            )
            ours = (
                nn.MultiheadAttention(dim, 4, batch_first=batch_first, add_bias_kv=bias_kv)
                .double()
                .eval()
            )
            ours.load_state_dict(ref.state_dict())
            ours.__class__ = PrunedMultiheadAttention
            x = torch.randn(batch, length, dim, dtype=torch.float64)
            if not batch_first:
                x = x.transpose(0, 1)
            mask = torch.rand(length, length) > 0.7
            mask.fill_diagonal_(False)
            padding = torch.zeros(batch, length, dtype=torch.bool)
            padding[:, -1] = True
            for need_weights in (True, False):
                kwargs = {
                    "attn_mask": mask,
                    "key_padding_mask": padding,
                    "need_weights": need_weights,
                }
                expected, got = ref(x, x, x, **kwargs), ours(x, x, x, **kwargs)
                torch.testing.assert_close(got[0], expected[0])
                if need_weights:
                    torch.testing.assert_close(got[1], expected[1])
