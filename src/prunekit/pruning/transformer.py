"""Prune a Hugging Face encoder: whole layers, attention heads and FFN neurons, by importance.

The order follows the expert recipe: drop the layers whose removal changes the output least
(``criteria.layer_importance``), then remove heads and FFN neurons by importance. How many
each layer keeps is the ``allocation``:

* ``global``: all layers' scores, normalised per layer, ranked together (Michel et al. 2019
  prune heads globally this way: a layer whose heads all matter keeps them, a redundant layer
  loses many). The default for heads.
* ``uniform``: every layer loses the same fraction, its lowest-scored atoms. The default for
  FFN neurons: on all-MiniLM-L6-v2 at half its heads and half its FFN neurons, global ranking
  left layer 0 with 200 of 1,536 neurons, and uniform allocation was closer to the dense
  model (Spearman after refit 0.823 against 0.812; after 600 s of distillation 0.904 against
  0.896).

Every layer keeps at least one head and one FFN neuron; asking for more than that allows is
an error that says how far the ratio can go (drop layers instead, ``layers=``).

Criteria: ``importance`` (mask-gradient importance, ``criteria.head_importance`` /
``ffn_importance``; label-free embedding sensitivity unless a ``loss_fn`` is given),
``magnitude`` (L1 group magnitude) and ``random`` -- the baselines of the benchmark.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from prunekit._checks import check_callable, check_module, check_number, got
from prunekit.errors import InvalidArgumentError, InvalidValueError
from prunekit.graph import ChannelGraph, trace_channels
from prunekit.inputs import ExampleInputs, as_example_inputs
from prunekit.pruning import PruneResult, StructuredPruning, prune
from prunekit.pruning.config import PruneConfigError

CRITERIA = ("importance", "magnitude", "random")
ALLOCATIONS = ("global", "uniform")
Log = Callable[[str], None]


class PruneConfigTypeError(PruneConfigError, InvalidArgumentError):
    """A transformer pruning setting of the wrong type (also a ``TypeError``)."""


class PruneConfigValueError(PruneConfigError, InvalidValueError):
    """A transformer pruning setting with an impossible value (also a ``ValueError``)."""


def _check_choice(value: Any, name: str, choices: Sequence[str]) -> None:
    options = ", ".join(choices)
    if not isinstance(value, str):
        raise PruneConfigTypeError(f"{name} must be one of {options} (a string), got {got(value)}")
    if value not in choices:
        raise PruneConfigValueError(f"unknown {name} {value!r}; choose one of: {options}")


@dataclass(frozen=True)
class TransformerPruning:
    heads: float = 0.0  # fraction of all attention heads to remove
    ffn: float = 0.0  # fraction of all FFN intermediate neurons to remove
    layers: int = 0  # whole encoder layers to drop
    criterion: str = "importance"
    seed: int = 0
    # how many heads / neurons each layer keeps: "global" ranks all layers' scores together
    # (a redundant layer loses more), "uniform" takes the same fraction from every layer
    head_allocation: str = "global"
    ffn_allocation: str = "uniform"

    def __post_init__(self) -> None:
        # PruneConfigError as before; the wrong type is also a TypeError, the wrong value a
        # ValueError (PruneConfigTypeError, PruneConfigValueError)
        for name in ("heads", "ffn"):
            value = getattr(self, name)
            message = f"{name} must be a fraction in [0, 1), got {value!r}"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PruneConfigTypeError(message)
            if not 0 <= value < 1:
                raise PruneConfigValueError(message)
        message = f"layers must be a non-negative integer, got {self.layers!r}"
        if isinstance(self.layers, bool) or not isinstance(self.layers, int):
            raise PruneConfigTypeError(message)
        if self.layers < 0:
            raise PruneConfigValueError(message)
        for name in ("head_allocation", "ffn_allocation"):
            _check_choice(getattr(self, name), name, ALLOCATIONS)
        _check_choice(self.criterion, "criterion", CRITERIA)
        check_number(
            self.seed,
            "seed",
            low=0,
            integer=True,
            type_error=PruneConfigTypeError,
            value_error=PruneConfigValueError,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransformerPruning:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise PruneConfigValueError(
                f"unknown transformer pruning settings: {', '.join(unknown)}"
            )
        return cls(**data)


@dataclass
class TransformerPruneResult:
    dropped_layers: list[int] = field(default_factory=list)  # indices in the original model
    heads_before: list[int] = field(default_factory=list)  # per remaining layer
    heads: list[int] = field(default_factory=list)
    ffn_before: list[int] = field(default_factory=list)
    ffn: list[int] = field(default_factory=list)
    fallback: dict[str, str] = field(default_factory=dict)  # group -> why scored by magnitude
    prune: PruneResult | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("prune")
        return data


def global_keep(
    sizes: Sequence[int], scores: Sequence[np.ndarray], fraction: float, what: str
) -> list[int]:
    """How many atoms each group keeps when ``fraction`` of all atoms go, lowest scores first
    across groups, every group keeping at least one."""
    total = sum(sizes)
    remove = math.floor(fraction * total + 1e-9)
    most = total - len(sizes)
    if remove > most:
        raise PruneConfigError(
            f"removing {fraction:.0%} of the {what} ({remove} of {total}) would empty a layer: "
            f"with one kept per layer at most {most / total:.1%} can go; drop whole layers "
            "instead (layers=N / --layers N)"
        )
    keep = list(sizes)
    order = sorted(
        ((float(s), g, a) for g, group in enumerate(scores) for a, s in enumerate(group)),
    )
    removed = 0
    for _, g, _a in order:
        if removed == remove:
            break
        if keep[g] > 1:
            keep[g] -= 1
            removed += 1
    return keep


def uniform_keep(sizes: Sequence[int], fraction: float) -> list[int]:
    """How many atoms each group keeps when ``fraction`` of each group's atoms go (rounded
    down, so every group keeps at least one while ``fraction < 1``)."""
    return [size - math.floor(fraction * size + 1e-9) for size in sizes]


def _scores(
    kind: str,
    config: TransformerPruning,
    model: nn.Module,
    graph: ChannelGraph,
    calibration: Sequence[Any],
    loss_fn: Callable[..., Any] | None,
    embedding_fn: Callable[..., Any] | None,
) -> dict[int, np.ndarray]:
    from prunekit.criteria.head_importance import ffn_importance, head_importance
    from prunekit.criteria.magnitude import magnitude_scores
    from prunekit.criteria.random import random_scores

    if config.criterion == "importance":
        fn = head_importance if kind == "heads" else ffn_importance
        return dict(fn(model, graph, calibration, loss_fn, embedding_fn=embedding_fn))
    if config.criterion == "magnitude":
        raw = dict(magnitude_scores(model, graph))
    else:
        raw = dict(random_scores(graph, seed=config.seed))
    # per-layer L2 normalisation, as for importance, so that layers compare
    return {g: s / max(float(np.linalg.norm(s)), 1e-12) for g, s in raw.items()}


def prune_transformer(
    model: nn.Module,
    example: ExampleInputs | Any,
    calibration: Iterable[Any],
    config: TransformerPruning,
    *,
    loss_fn: Callable[..., Any] | None = None,
    embedding_fn: Callable[..., Any] | None = None,
    log: Log = lambda _: None,
) -> TransformerPruneResult:
    """Prune ``model`` in place. ``example``: inputs for one forward pass *without padding*
    (the tracer tells heads apart only then); ``calibration``: batches for the importance
    scores (padded tokenised batches are fine)."""
    check_module(model)
    example = as_example_inputs(example, "example")
    if isinstance(calibration, (str, bytes, Mapping)) or not hasattr(calibration, "__iter__"):
        raise InvalidArgumentError(
            "calibration must be an iterable of batches, such as "
            "prunekit.evaluate.embedding.sentence_batches(tokenizer, sentences) (wrap a single "
            f"batch in a list), got {got(calibration)}"
        )
    if not isinstance(config, TransformerPruning):
        hint = (
            " (channels of convolutions and linear layers are pruned by prunekit.pruning.prune)"
            if isinstance(config, StructuredPruning)
            else ""
        )
        raise InvalidArgumentError(
            "config must be a prunekit.pruning.transformer.TransformerPruning, such as "
            f"TransformerPruning(heads=0.5, ffn=0.5), got {got(config)}{hint}"
        )
    check_callable(loss_fn, "loss_fn", "a function (model, batch) -> loss", optional=True)
    check_callable(
        embedding_fn, "embedding_fn", "a function (model, batch) -> embeddings", optional=True
    )
    check_callable(log, "log", "a function taking one string")
    from prunekit.criteria.head_importance import transformer_groups
    from prunekit.criteria.layer_importance import drop_layers, encoder_layers, layer_importance

    batches = list(calibration)
    result = TransformerPruneResult()
    if config.layers:
        _, layers = encoder_layers(model)
        if config.layers >= len(layers):
            raise PruneConfigError(
                f"cannot drop {config.layers} of the model's {len(layers)} layers: keep at least one"
            )
        if config.criterion == "random":
            rng = np.random.default_rng(config.seed)
            drop = sorted(rng.choice(len(layers), config.layers, replace=False).tolist())
        else:
            drop = sorted(layer_importance(model, batches, embedding_fn=embedding_fn)
                          .least_important(config.layers))  # fmt: skip
        drop_layers(model, drop)
        result.dropped_layers = [int(i) for i in drop]
        log(f"dropped layers {result.dropped_layers}")
    graph = trace_channels(model, example)
    groups = transformer_groups(model, graph)
    heads = [g for g in groups if g.kind == "heads"]
    ffns = [g for g in groups if g.kind == "ffn"]
    if (config.heads and not heads) or (config.ffn and not ffns):
        what = "attention-head" if config.heads and not heads else "FFN"
        raise PruneConfigError(
            f"found no prunable {what} groups in {type(model).__name__}: prunekit prunes "
            "Hugging Face BERT, RoBERTa, DistilBERT and ViT encoders (trace on inputs without "
            "padding)"
        )
    result.heads_before = result.heads = [g.group.size for g in heads]
    result.ffn_before = result.ffn = [g.group.size for g in ffns]
    keep: dict[int, int] = {}
    scores: dict[int, np.ndarray] = {}
    for kind, fraction, members in (("heads", config.heads, heads), ("ffn", config.ffn, ffns)):
        if not fraction:
            continue
        found = _scores(kind, config, model, graph, batches, loss_fn, embedding_fn)
        fallback = getattr(found, "fallback", {})
        for gid, why in fallback.items():
            result.fallback[str(gid)] = why
        chosen = [found[m.group.id] for m in members]
        sizes = [m.group.size for m in members]
        allocation = config.head_allocation if kind == "heads" else config.ffn_allocation
        if allocation == "uniform":
            kept = uniform_keep(sizes, fraction)
        else:
            kept = global_keep(sizes, chosen, fraction, kind)
        for member, k in zip(members, kept, strict=True):
            keep[member.group.id] = k
            scores[member.group.id] = found[member.group.id]
        if kind == "heads":
            result.heads = kept
        else:
            result.ffn = kept
        log(f"{kind}: kept per layer {kept}")
    if keep:
        result.prune = prune(model, example, StructuredPruning(), graph=graph, scores=scores,
                             keep=keep)  # fmt: skip
    return result
