"""Data-driven importance of attention heads and FFN neurons, from gradients of a head mask.

**Heads** (Michel, Levy & Neubig, "Are Sixteen Heads Really Better than One?", NeurIPS 2019).
Give every head ``h`` a mask variable ``xi_h`` that multiplies the head's context output
(``xi_h = 1`` is the model as it is, ``xi_h = 0`` the model without the head). The head's
importance is how much the loss is sensitive to the mask::

    I_h = E_x | dL(x) / dxi_h |

computed here per calibration example (each example gets its own mask) and averaged over all
examples of all batches, then normalised per layer by the L2 norm over the layer's heads, as
the paper does. The heads of a layer are concatenated before the attention output projection
(``attention.output.dense`` in BERT, ``out_lin`` in DistilBERT), so no ``head_mask`` argument
is needed (transformers 5 removed it from many models): a forward pre-hook on the output
projection multiplies its input ``c`` [batch, tokens, heads * head_dim] by a mask of ones
[batch, 1, heads * head_dim] that requires a gradient, which leaves the values unchanged and
gives ``dL/dmask = sum over tokens of c * dL/dc`` per column. The columns of a head are added
up: ``dL/dxi_h = sum over tokens and the head's dimensions of c * dL/dc``. Which columns form
which atom of the traced head group is read from the group itself (its member on the output
projection's weight, dimension 1), so the scores are in the group's atom order whatever the
order of the heads, and an atom is scored by the mask over exactly what pruning it removes.

**FFN neurons**: the same mask-gradient score on the intermediate activations, observed at
the input of the FFN output projection (``output.dense`` in BERT, ``ffn.lin2`` in DistilBERT,
``mlp.fc2`` in ViT): ``I_j = E_x |dL/dxi_j| = E_x |sum over tokens of a_j * dL/da_j|``.

**The loss.** ``loss_fn(model, batch) -> scalar`` given by the user (a task loss, e.g. the
cross-entropy of a classifier on labelled batches). Without one, a label-free criterion for
embedding models (sentence-transformers style; prunekit's adaptation, not from the paper):
the natural loss, the distance between the masked model's embedding and the dense model's,
is zero with a zero gradient at ``xi = 1``, so it carries no first-order signal. Instead the
score is the expected squared sensitivity of the output embedding ``e(x)`` (mean-pooled and
L2-normalised last hidden state, or ``embedding_fn``) to the mask::

    I_h = E_x sum_k (d e_k(x) / dxi_h)^2

a Fisher-style sensitivity: the second-order change of ``|e_masked - e|^2`` when the mask
moves away from 1. Computing it exactly needs one backward pass per embedding dimension, so
it is estimated with random projections: for ``r ~ N(0, I)``, ``E_r (d(r . e)/dxi_h)^2 =
sum_k (de_k/dxi_h)^2``, so the average of ``(d(r . e)/dxi_h)^2`` over ``projections``
independent draws of ``r`` per example (one backward pass each, seeded by ``seed``) and over
the examples is an unbiased estimate. The per-layer L2 normalisation is applied as for heads.

Heads whose output-projection columns are all zero get an importance of exactly 0. A layer
whose heads all score 0 (the loss does not depend on it) is scored by L1 magnitude instead
and listed in the result's ``fallback``.

The result holds scores for the head groups only (``head_importance``) or the FFN groups
only (``ffn_importance``) of the traced graph; ``prune(model, x, graph=graph, scores=scores,
keep={...})`` removes the lowest-scored heads of the groups in ``keep`` (``transformer_groups``
finds them) and ranks any other pruned group by the config's importance. For baselines, the
L1 group magnitude (``magnitude_scores``) and ``random_scores`` score the same groups.

Supported models: Hugging Face encoders with one ``encoder.layer``, ``transformer.layer`` or
``layers`` list (BERT, RoBERTa, DistilBERT, ViT, MiniLM...; see ``encoder_layers``). Trace the graph on inputs without padding
(an all-ones attention mask, e.g. one tokenised sentence): a padded mask is added to the
attention scores, and the tracer then cannot tell the heads apart, so the layer has no head
group. The calibration batches themselves may be padded. The model runs in eval mode; its
parameters' ``requires_grad`` flags and ``.grad`` are left as they were (gradients are taken
with respect to the masks only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.criteria._common import (
    CriterionError,
    GroupScores,
    accumulation_dtype,
    calibration_batches,
    model_device,
    model_tensors,
    module_of,
    scalar_loss,
)
from prunekit.criteria.layer_importance import batch_embedding, encoder_layers
from prunekit.evaluate.embedding import BatchEmbedding
from prunekit.graph import ChannelGraph, Group, Member

__all__ = [
    "KINDS",
    "TransformerGroup",
    "ffn_importance",
    "head_importance",
    "transformer_groups",
]

KINDS = ("heads", "ffn")

BatchLoss = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> scalar loss


@dataclass(frozen=True)
class TransformerGroup:
    """A prunable group of an encoder layer: its attention heads or its FFN neurons.

    ``projection``: the linear layer that reads the group's channels (the attention output
    projection, or the FFN output projection); ``member``: the group's member on that layer's
    weight columns, mapping each input column to its atom.
    """

    group: Group
    kind: str  # "heads" or "ffn"
    layer: int  # index in the encoder's layer list
    projection: str
    member: Member

    @property
    def group_id(self) -> int:
        return self.group.id


def _is_attention(name: str) -> bool:
    return "attention" in name.lower()


def transformer_groups(model: nn.Module, graph: ChannelGraph) -> list[TransformerGroup]:
    """The attention-head and FFN-neuron groups of ``graph`` (traced on ``model``), in layer
    order: every prunable group read by exactly one ``nn.Linear`` (through its weight columns)
    inside an encoder layer. The group is a head group when that linear layer sits in a module
    whose class name contains "Attention" (``BertAttention``, ``DistilBertSelfAttention``...),
    an FFN group otherwise."""
    model_tensors(model, graph)  # the graph must describe this model
    prefix, layers = encoder_layers(model)
    modules = dict(model.named_modules())
    found = []
    for group in graph.prunable:
        readers = [
            m
            for m in group.members
            if m.dim == 1
            and not m.is_buffer
            and m.owner.endswith(".weight")
            and bool(m.consumer.all())
            and isinstance(modules.get(module_of(m.owner)), nn.Linear)
        ]
        if len(readers) != 1:
            continue
        member = readers[0]
        projection = module_of(member.owner)
        if not projection.startswith(prefix + "."):
            continue
        index_text, _, inner = projection[len(prefix) + 1 :].partition(".")
        if not index_text.isdigit() or not inner:
            continue
        layer = int(index_text)
        layer_name = f"{prefix}.{layer}"
        parts = inner.split(".")
        ancestors = [f"{layer_name}.{'.'.join(parts[:k])}" for k in range(1, len(parts))]
        heads = any(_is_attention(type(modules[a]).__name__) for a in ancestors if a in modules)
        if np.bincount(member.atom, minlength=group.size).min() == 0:
            continue  # some atom has no column there: not a group this criterion can score
        found.append(
            TransformerGroup(group, "heads" if heads else "ffn", layer, projection, member)
        )
    if not found and len(layers):
        raise CriterionError(
            "no attention-head or FFN group of the channel graph is read by a linear layer of "
            f"the encoder layers ({prefix}): trace the graph on this model "
            "(prunekit.graph.trace_channels) and check that it finds the heads"
        )
    return sorted(found, key=lambda t: (t.layer, KINDS.index(t.kind)))


class _Masks:
    """Forward pre-hooks multiplying the input of each observed projection by a ones mask
    [batch, 1..., columns] that requires a gradient."""

    def __init__(self, modules: dict[str, nn.Module], names: list[str]) -> None:
        self.masks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.problems: dict[str, str] = {}
        self.handles = [modules[n].register_forward_pre_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], Any]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
            x = args[0] if args else None
            columns = getattr(module, "in_features", None)
            if (
                not isinstance(x, torch.Tensor)
                or not x.is_floating_point()
                or x.dim() < 2
                or x.shape[-1] != columns
            ):
                got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                self.problems.setdefault(name, f"input {got} is not [batch, ..., {columns}]")
                return None
            shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
            mask = torch.ones(shape, dtype=x.dtype, device=x.device, requires_grad=True)
            self.masks[name].append(mask)
            return (x * mask, *args[1:])

        return hook

    def clear(self) -> None:
        for masks in self.masks.values():
            masks.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.clear()


def _per_atom(
    grads: list[torch.Tensor], atoms: torch.Tensor, size: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """[batch, atoms]: the mask gradients of one projection (one per call, e.g. per chunk of
    a chunked FFN), per example and column, added up per atom."""
    total: torch.Tensor | None = None
    for g in grads:
        flat = g.reshape(g.shape[0], g.shape[-1]).to(dtype)
        total = flat if total is None else total + flat
    if total is None:
        return None
    out = torch.zeros(total.shape[0], size, dtype=dtype, device=total.device)
    return out.index_add_(1, atoms.to(total.device), total)


def _check_loss(loss: Any) -> torch.Tensor:
    return scalar_loss(
        loss,
        "loss_fn must return",
        "does not depend on the model's activations (it has no gradient): loss_fn must not "
        "run the model under torch.no_grad()",
    )


def _mask_gradient_scores(
    kind: str,
    model: nn.Module,
    graph: ChannelGraph,
    calibration: Iterable[Any] | None,
    loss_fn: BatchLoss | None,
    embedding_fn: BatchEmbedding | None,
    projections: int,
    seed: int,
    normalize: bool,
) -> GroupScores:
    name = "head_importance" if kind == "heads" else "ffn_importance"
    if loss_fn is not None and embedding_fn is not None:
        raise CriterionError(f"{name}: pass either loss_fn or embedding_fn, not both")
    if isinstance(projections, bool) or not isinstance(projections, int) or projections < 1:
        raise CriterionError(f"projections must be a positive integer, got {projections!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CriterionError(f"the seed must be a non-negative integer, got {seed!r}")
    tensors = model_tensors(model, graph)
    targets = [t for t in transformer_groups(model, graph) if t.kind == kind]
    if not targets:
        what = "attention-head" if kind == "heads" else "FFN"
        hint = (
            " (trace it on inputs without padding: a padded attention mask hides the heads)"
            if kind == "heads"
            else ""
        )
        raise CriterionError(f"{name}: the channel graph has no prunable {what} group{hint}")
    device = model_device(model)
    dtype = accumulation_dtype(device)
    modules = dict(model.named_modules())
    names = sorted({t.projection for t in targets})
    atoms = {t.group.id: torch.as_tensor(t.member.atom, dtype=torch.long) for t in targets}
    acc: dict[int, torch.Tensor] = {}
    samples: dict[int, int] = {}
    gen = torch.Generator().manual_seed(int(seed))

    def accumulate(grads: dict[str, list[torch.Tensor]], weight: float, square: bool) -> None:
        for t in targets:
            per = _per_atom(grads[t.projection], atoms[t.group.id], t.group.size, dtype)
            if per is None:
                continue
            value = (per * per if square else per.abs()).sum(dim=0) * weight
            acc[t.group.id] = acc[t.group.id] + value if t.group.id in acc else value

    masks = _Masks(modules, names)
    was_training = model.training
    try:
        model.eval()
        for batch in calibration_batches(calibration, name, device):
            masks.clear()
            with torch.enable_grad():
                if loss_fn is not None:
                    out = _check_loss(loss_fn(model, batch.item))
                else:
                    out = batch_embedding(model, batch, embedding_fn)
                flat = [(n, m) for n in names for m in masks.masks[n]]
                if not flat:
                    break  # no projection ran: reported below
                count = {n: int(ms[0].shape[0]) for n, ms in masks.masks.items() if ms}
                rounds = 1 if loss_fn is not None else projections
                for r in range(rounds):
                    if loss_fn is not None:
                        objective = out
                    else:
                        noise = torch.randn(out.shape, generator=gen, dtype=torch.float32)
                        objective = (out * noise.to(out.device, out.dtype)).sum()
                    if not objective.requires_grad:
                        raise CriterionError(
                            f"{name}: the embeddings do not depend on the model's activations "
                            "(no gradient): embedding_fn must not use torch.no_grad()"
                        )
                    got = torch.autograd.grad(
                        objective,
                        [m for _, m in flat],
                        retain_graph=r < rounds - 1,
                        allow_unused=True,
                    )
                    grads: dict[str, list[torch.Tensor]] = {n: [] for n in names}
                    for (n, m), g in zip(flat, got, strict=True):
                        # None: the objective does not depend on this mask at all
                        grads[n].append(torch.zeros_like(m) if g is None else g)
                    accumulate(grads, 1.0 / rounds, square=loss_fn is None)
            del out, flat
            for t in targets:
                if t.projection in count:
                    samples[t.group.id] = samples.get(t.group.id, 0) + count[t.projection]
    finally:
        masks.remove()
        model.train(was_training)

    scores = GroupScores(name)
    cache: dict[int, torch.Tensor] = {}
    for t in targets:
        gid = t.group.id
        if gid not in acc or not samples.get(gid):
            why = masks.problems.get(t.projection, f"{t.projection} did not run")
            scores.use_magnitude(t.group, tensors, f"{why}: scored by L1 magnitude", cache)
            continue
        values = acc[gid].cpu().double().numpy() / samples[gid]
        norm = float(np.sqrt(np.sum(values * values)))
        if norm == 0:
            scores.use_magnitude(
                t.group,
                tensors,
                "the loss does not depend on this layer (all mask gradients are zero): scored "
                "by L1 magnitude",
                cache,
            )
            continue
        scores[gid] = values / norm if normalize else values
    return scores


def head_importance(
    model: nn.Module,
    graph: ChannelGraph,
    calibration: Iterable[Any] | None,
    loss_fn: BatchLoss | None = None,
    *,
    embedding_fn: BatchEmbedding | None = None,
    projections: int = 8,
    seed: int = 0,
    normalize: bool = True,
) -> GroupScores:
    """Mask-gradient importance (Michel et al. 2019) of the attention heads of every layer,
    ``group.id -> one score per head`` for the head groups of ``graph`` (traced on ``model``).

    ``calibration``: batches (see ``prunekit.criteria``), e.g. dicts of ``input_ids`` and
    ``attention_mask`` from ``prunekit.evaluate.embedding.sentence_batches``.
    ``loss_fn(model, batch) -> scalar``: the loss; the score is ``E_x |dL/dxi_h|`` over the
    examples (dimension 0 of the activations), so a loss that averages over the batch scales
    a batch's gradients by 1/batch size (harmless with batches of one size; sum the loss
    over the batch otherwise). Without ``loss_fn``: the label-free embedding sensitivity
    ``E_x sum_k (de_k/dxi_h)^2`` estimated with ``projections`` random projections per
    example (seeded by ``seed``) of ``embedding_fn(model, batch) -> [batch, dim]`` (default:
    mean-pooled, L2-normalised last hidden state). ``normalize``: divide each layer's scores
    by their L2 norm (the paper's per-layer normalisation).
    """
    return _mask_gradient_scores(
        "heads", model, graph, calibration, loss_fn, embedding_fn, projections, seed, normalize
    )


def ffn_importance(
    model: nn.Module,
    graph: ChannelGraph,
    calibration: Iterable[Any] | None,
    loss_fn: BatchLoss | None = None,
    *,
    embedding_fn: BatchEmbedding | None = None,
    projections: int = 8,
    seed: int = 0,
    normalize: bool = True,
) -> GroupScores:
    """The same mask-gradient importance as ``head_importance`` for the intermediate neurons
    of every FFN (one mask per neuron, at the input of the FFN output projection),
    ``group.id -> one score per neuron`` for the FFN groups of ``graph``."""
    return _mask_gradient_scores(
        "ffn", model, graph, calibration, loss_fn, embedding_fn, projections, seed, normalize
    )
