"""Hugging Face encoders whose layers have their own head counts and FFN widths.

Written by prunekit next to a pruned model's weights, and imported by prunekit itself: this
one file is both the remote code that ``AutoModel.from_pretrained(directory,
trust_remote_code=True)`` runs and the code prunekit's own loader uses. It needs only torch
and transformers (never prunekit), so that a model exported by prunekit loads where
prunekit is not installed.

Each class subclasses the stock transformers class. After the stock constructor has built
every layer at full size, ``resize_pruned_layers`` shrinks each layer to the sizes that
``config.json`` lists, before the weights are loaded:

* ``prunekit_layer_heads``: attention heads kept in each layer;
* ``prunekit_layer_intermediate``: FFN (intermediate) neurons kept in each layer;
* ``prunekit_head_size``: the size of one head (unchanged by pruning).

``num_hidden_layers`` (``n_layers`` for DistilBERT) is the number of layers the model has;
``prunekit_kept_layers`` tells which layers of the original model they were, when layers
were dropped. Attention is computed by the stock code, with any ``attn_implementation``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForMultipleChoice,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForMultipleChoice,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

HEADS = "prunekit_layer_heads"
INTERMEDIATE = "prunekit_layer_intermediate"
HEAD_SIZE = "prunekit_head_size"
KEPT_LAYERS = "prunekit_kept_layers"

# Where the parts of one layer live, relative to the layer, across model families and
# transformers versions (the first path that exists wins).
_LAYER_LISTS = ("encoder.layer", "transformer.layer", "layers")
_ATTENTION = ("attention.self", "attention.attention", "attention")
_QKV = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"))
_ATTENTION_OUT = ("attention.output.dense", "attention.out_lin", "attention.o_proj")
_FFN = (("intermediate.dense", "output.dense"), ("ffn.lin1", "ffn.lin2"), ("mlp.fc1", "mlp.fc2"))
_HEAD_COUNTS = ("num_attention_heads", "n_heads", "num_heads")


def _get(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        child = getattr(module, part, None)
        if not isinstance(child, nn.Module):
            return None
        module = child
    return module


def _linear(module: nn.Module, path: str) -> nn.Linear | None:
    found = _get(module, path)
    return found if isinstance(found, nn.Linear) else None


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer layers."""
    bases = [getattr(model, "base_model", model), model]
    for base in bases:
        for path in _LAYER_LISTS:
            found = _get(base, path)
            if isinstance(found, nn.ModuleList):
                return found
    raise ValueError(
        f"{type(model).__name__}: no transformer layer list ({', '.join(_LAYER_LISTS)})"
    )


def _attention(layer: nn.Module) -> tuple[nn.Module, list[nn.Linear]] | None:
    for path in _ATTENTION:
        attention = _get(layer, path)
        if attention is None:
            continue
        for names in _QKV:
            qkv = [q for q in (_linear(attention, n) for n in names) if q is not None]
            if len(qkv) == 3:
                return attention, qkv
    return None


def _pair(
    layer: nn.Module, pairs: tuple[tuple[str, str], ...]
) -> tuple[nn.Linear, nn.Linear] | None:
    for a, b in pairs:
        first, second = _linear(layer, a), _linear(layer, b)
        if first is not None and second is not None:
            return first, second
    return None


class LayerParts:
    """The modules of one layer that pruning resizes: query/key/value, the attention output
    projection, and the FFN's two linear layers."""

    def __init__(self, layer: nn.Module) -> None:
        found = _attention(layer)
        out = next((m for m in (_linear(layer, p) for p in _ATTENTION_OUT) if m is not None), None)
        ffn = _pair(layer, _FFN)
        if found is None or out is None or ffn is None:
            raise ValueError(f"{type(layer).__name__}: unknown transformer layer layout")
        self.attention: Any = found[0]
        self.qkv = found[1]
        self.out = out
        self.up, self.down = ffn
        size = getattr(self.attention, "attention_head_size", None)
        size = getattr(self.attention, "head_dim", None) if size is None else size
        if not isinstance(size, int):
            raise ValueError(
                f"{type(self.attention).__name__} has no attention_head_size / head_dim"
            )
        self.head_size = size

    @property
    def heads(self) -> int:
        return int(self.qkv[0].weight.shape[0]) // self.head_size

    @property
    def intermediate(self) -> int:
        return int(self.up.weight.shape[0])


def _shrink(
    linear: nn.Linear, out_features: int | None = None, in_features: int | None = None
) -> None:
    """Give ``linear`` a smaller weight (the first rows / columns of the current one, so that a
    model built from a config starts from initialised values; loading overwrites them)."""
    out_features = linear.out_features if out_features is None else out_features
    in_features = linear.in_features if in_features is None else in_features
    weight = linear.weight
    if (out_features, in_features) == tuple(weight.shape):
        return
    if (
        out_features > weight.shape[0]
        or in_features > weight.shape[1]
        or min(out_features, in_features) < 1
    ):
        raise ValueError(
            f"cannot resize a {tuple(weight.shape)} linear layer to {(out_features, in_features)}"
        )
    with torch.no_grad():
        linear.weight = nn.Parameter(
            weight[:out_features, :in_features].clone(), requires_grad=weight.requires_grad
        )
        if linear.bias is not None and linear.bias.shape[0] != out_features:
            bias = linear.bias
            linear.bias = nn.Parameter(
                bias[:out_features].clone(), requires_grad=bias.requires_grad
            )
    linear.out_features, linear.in_features = out_features, in_features


def _sizes(config: Any, name: str, count: int) -> list[int] | None:
    values = getattr(config, name, None)
    if values is None:
        return None
    if not isinstance(values, (list, tuple)) or len(values) != count:
        raise ValueError(
            f"config {name} must list one size for each of the model's {count} layers, got {values!r}"
        )
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ValueError(f"config {name} must hold positive integers, got {values!r}")
    return list(values)


def resize_pruned_layers(model: nn.Module, config: Any) -> None:
    """Shrink each layer's attention and FFN to the sizes ``config`` lists (no-op without them)."""
    if getattr(config, HEADS, None) is None and getattr(config, INTERMEDIATE, None) is None:
        return
    layers = find_layers(model)
    heads = _sizes(config, HEADS, len(layers))
    widths = _sizes(config, INTERMEDIATE, len(layers))
    head_size = getattr(config, HEAD_SIZE, None)
    for i, layer in enumerate(layers):
        parts = LayerParts(layer)
        if head_size is not None and parts.head_size != head_size:
            raise ValueError(
                f"layer {i}: head size {parts.head_size}, but config {HEAD_SIZE} is {head_size}"
            )
        if heads is not None:
            width = heads[i] * parts.head_size
            for linear in parts.qkv:
                _shrink(linear, out_features=width)
            _shrink(parts.out, in_features=width)
            for attr in _HEAD_COUNTS:
                if isinstance(getattr(parts.attention, attr, None), int):
                    setattr(parts.attention, attr, heads[i])
            if isinstance(getattr(parts.attention, "all_head_size", None), int):
                parts.attention.all_head_size = width
        if widths is not None:
            _shrink(parts.up, out_features=widths[i])
            _shrink(parts.down, in_features=widths[i])


class PrunedLayersMixin:
    """Build the stock model, then resize its layers as ``config`` says."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)  # type: ignore[call-arg]
        resize_pruned_layers(self, config)  # type: ignore[arg-type]


class PrunekitBertConfig(BertConfig):
    pass


class PrunekitRobertaConfig(RobertaConfig):
    pass


class PrunekitDistilBertConfig(DistilBertConfig):
    pass


class PrunekitViTConfig(ViTConfig):
    pass


class PrunekitBertModel(PrunedLayersMixin, BertModel):
    config_class = PrunekitBertConfig


class PrunekitBertForSequenceClassification(PrunedLayersMixin, BertForSequenceClassification):
    config_class = PrunekitBertConfig


class PrunekitBertForTokenClassification(PrunedLayersMixin, BertForTokenClassification):
    config_class = PrunekitBertConfig


class PrunekitBertForQuestionAnswering(PrunedLayersMixin, BertForQuestionAnswering):
    config_class = PrunekitBertConfig


class PrunekitBertForMultipleChoice(PrunedLayersMixin, BertForMultipleChoice):
    config_class = PrunekitBertConfig


class PrunekitBertForMaskedLM(PrunedLayersMixin, BertForMaskedLM):
    config_class = PrunekitBertConfig


class PrunekitRobertaModel(PrunedLayersMixin, RobertaModel):
    config_class = PrunekitRobertaConfig


class PrunekitRobertaForSequenceClassification(PrunedLayersMixin, RobertaForSequenceClassification):
    config_class = PrunekitRobertaConfig


class PrunekitRobertaForTokenClassification(PrunedLayersMixin, RobertaForTokenClassification):
    config_class = PrunekitRobertaConfig


class PrunekitRobertaForQuestionAnswering(PrunedLayersMixin, RobertaForQuestionAnswering):
    config_class = PrunekitRobertaConfig


class PrunekitRobertaForMultipleChoice(PrunedLayersMixin, RobertaForMultipleChoice):
    config_class = PrunekitRobertaConfig


class PrunekitRobertaForMaskedLM(PrunedLayersMixin, RobertaForMaskedLM):
    config_class = PrunekitRobertaConfig


class PrunekitDistilBertModel(PrunedLayersMixin, DistilBertModel):
    config_class = PrunekitDistilBertConfig


class PrunekitDistilBertForSequenceClassification(
    PrunedLayersMixin, DistilBertForSequenceClassification
):
    config_class = PrunekitDistilBertConfig


class PrunekitDistilBertForTokenClassification(PrunedLayersMixin, DistilBertForTokenClassification):
    config_class = PrunekitDistilBertConfig


class PrunekitDistilBertForQuestionAnswering(PrunedLayersMixin, DistilBertForQuestionAnswering):
    config_class = PrunekitDistilBertConfig


class PrunekitDistilBertForMultipleChoice(PrunedLayersMixin, DistilBertForMultipleChoice):
    config_class = PrunekitDistilBertConfig


class PrunekitDistilBertForMaskedLM(PrunedLayersMixin, DistilBertForMaskedLM):
    config_class = PrunekitDistilBertConfig


class PrunekitViTModel(PrunedLayersMixin, ViTModel):
    config_class = PrunekitViTConfig


class PrunekitViTForImageClassification(PrunedLayersMixin, ViTForImageClassification):
    config_class = PrunekitViTConfig


# model_type -> (config class, [(auto class, stock class, pruned class), ...])
FAMILIES: dict[str, tuple[type, list[tuple[str, type, type]]]] = {
    "bert": (
        PrunekitBertConfig,
        [
            ("AutoModel", BertModel, PrunekitBertModel),
            ("AutoModelForSequenceClassification", BertForSequenceClassification, PrunekitBertForSequenceClassification),
            ("AutoModelForTokenClassification", BertForTokenClassification, PrunekitBertForTokenClassification),
            ("AutoModelForQuestionAnswering", BertForQuestionAnswering, PrunekitBertForQuestionAnswering),
            ("AutoModelForMultipleChoice", BertForMultipleChoice, PrunekitBertForMultipleChoice),
            ("AutoModelForMaskedLM", BertForMaskedLM, PrunekitBertForMaskedLM),
        ],
    ),
    "roberta": (
        PrunekitRobertaConfig,
        [
            ("AutoModel", RobertaModel, PrunekitRobertaModel),
            ("AutoModelForSequenceClassification", RobertaForSequenceClassification, PrunekitRobertaForSequenceClassification),
            ("AutoModelForTokenClassification", RobertaForTokenClassification, PrunekitRobertaForTokenClassification),
            ("AutoModelForQuestionAnswering", RobertaForQuestionAnswering, PrunekitRobertaForQuestionAnswering),
            ("AutoModelForMultipleChoice", RobertaForMultipleChoice, PrunekitRobertaForMultipleChoice),
            ("AutoModelForMaskedLM", RobertaForMaskedLM, PrunekitRobertaForMaskedLM),
        ],
    ),
    "distilbert": (
        PrunekitDistilBertConfig,
        [
            ("AutoModel", DistilBertModel, PrunekitDistilBertModel),
            ("AutoModelForSequenceClassification", DistilBertForSequenceClassification, PrunekitDistilBertForSequenceClassification),
            ("AutoModelForTokenClassification", DistilBertForTokenClassification, PrunekitDistilBertForTokenClassification),
            ("AutoModelForQuestionAnswering", DistilBertForQuestionAnswering, PrunekitDistilBertForQuestionAnswering),
            ("AutoModelForMultipleChoice", DistilBertForMultipleChoice, PrunekitDistilBertForMultipleChoice),
            ("AutoModelForMaskedLM", DistilBertForMaskedLM, PrunekitDistilBertForMaskedLM),
        ],
    ),
    "vit": (
        PrunekitViTConfig,
        [
            ("AutoModel", ViTModel, PrunekitViTModel),
            ("AutoModelForImageClassification", ViTForImageClassification, PrunekitViTForImageClassification),
        ],
    ),
}  # fmt: skip
