"""Write a pruned (or unpruned) Hugging Face encoder as a directory Hugging Face tools load.

The directory holds ``config.json`` (the model's config, the per-layer sizes and an
``auto_map``), the weights as ``model.safetensors`` (written by transformers'
``save_pretrained``, so tied weights and key names are what ``from_pretrained`` expects),
``modeling_prunekit.py`` (a verbatim copy of ``prunekit.hf.modeling_prunekit``) and, when
asked, the tokenizer / image processor and sentence-transformers files. Before anything is
written, the model described by the new config is built on the meta device and its tensor
shapes are compared with the model's: a model the config cannot describe (a pruned hidden
size, for instance) is refused instead of being saved unloadable.
"""

from __future__ import annotations

import inspect
import json
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._outputs import OutputDir, check_output_dir
from prunekit._version import __version__
from prunekit.hf import HFExportError
from prunekit.hf import modeling_prunekit as modeling

CONFIG = "config.json"
MODELING_FILE = "modeling_prunekit.py"
ORIGINAL_LAYERS = "prunekit_original_num_layers"
VERSION = "prunekit_version"

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
)
SENTENCE_TRANSFORMERS_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
EXPORT_COMMAND = "prunekit.hf.save_pretrained_pruned()"
_MODEL_FILES = (CONFIG, MODELING_FILE, "model.safetensors", "model.safetensors.index.json")


def _supported() -> str:
    return ", ".join(
        stock.__name__ for _, entries in modeling.FAMILIES.values() for _, stock, _ in entries
    )


def _family(model: nn.Module) -> tuple[str, Any, type, Any]:
    """(model_type, config class, stock class, pruned class) of ``model``."""
    for model_type, (config_cls, entries) in modeling.FAMILIES.items():
        for _, stock, pruned in entries:
            if isinstance(model, stock):
                return model_type, config_cls, stock, pruned
    raise HFExportError(
        f"save_pretrained_pruned does not support {type(model).__module__}."
        f"{type(model).__qualname__}; it exports these Hugging Face classes (and their "
        f"subclasses): {_supported()}"
    )


def _layer_sizes(model: nn.Module) -> tuple[list[modeling.LayerParts], int]:
    """Each layer's parts, and the head size they share; checks that the shapes agree."""
    try:
        parts = [modeling.LayerParts(layer) for layer in modeling.find_layers(model)]
    except ValueError as exc:
        raise HFExportError(f"cannot export {type(model).__name__}: {exc}") from None
    if not parts:
        raise HFExportError(f"cannot export {type(model).__name__}: it has no layers left")
    sizes = {p.head_size for p in parts}
    if len(sizes) != 1:
        raise HFExportError(
            f"the layers of {type(model).__name__} have different head sizes {sorted(sizes)}"
        )
    for i, p in enumerate(parts):
        widths = {int(q.weight.shape[0]) for q in p.qkv} | {int(p.out.weight.shape[1])}
        if len(widths) != 1 or next(iter(widths)) % p.head_size:
            raise HFExportError(
                f"layer {i}: query/key/value/output widths {sorted(widths)} are not one whole "
                f"number of heads of size {p.head_size}; only whole heads can be exported"
            )
        if p.up.weight.shape[0] != p.down.weight.shape[1]:
            raise HFExportError(
                f"layer {i}: the FFN's layers disagree ({p.up.weight.shape[0]} outputs, "
                f"{p.down.weight.shape[1]} inputs)"
            )
    return parts, sizes.pop()


def _kept_layers(
    model: nn.Module, parts: list[modeling.LayerParts], explicit: Sequence[int] | None
) -> tuple[int, list[int] | None]:
    """(layers of the original model, which of them this model keeps: None if unknown)."""
    config: Any = model.config
    listed = int(config.num_hidden_layers)
    count = len(parts)
    if count > listed:
        raise HFExportError(f"the model has {count} layers but its config says {listed}")
    previous = getattr(config, modeling.KEPT_LAYERS, None)
    original = int(getattr(config, ORIGINAL_LAYERS, None) or listed)
    if explicit is not None:
        kept: list[int] | None = [int(i) for i in explicit]
    elif count == listed:
        kept = list(range(count))
    else:  # BERT and RoBERTa layers remember their index
        indices = [getattr(p.attention, "layer_idx", None) for p in parts]
        known = [i for i in indices if isinstance(i, int)]
        kept = known if len(known) == count else None
    if kept is not None:
        if len(kept) != count or sorted(set(kept)) != kept or kept[0] < 0 or kept[-1] >= listed:
            raise HFExportError(
                f"kept_layers must be {count} increasing indices below {listed}, got {kept}"
            )
        if isinstance(previous, list) and len(previous) == listed:  # exported before
            kept = [int(previous[i]) for i in kept]
    return original, kept


def pruned_config(model: nn.Module, kept_layers: Sequence[int] | None = None) -> dict[str, Any]:
    """The fields ``save_pretrained_pruned`` adds to (or changes in) the model's config."""
    model_type, config_cls, stock, _ = _family(model)
    parts, head_size = _layer_sizes(model)
    original, kept = _kept_layers(model, parts, kept_layers)
    config: Any = model.config
    layer_key = type(config).attribute_map.get("num_hidden_layers", "num_hidden_layers")
    entries = modeling.FAMILIES[model_type][1]
    module = Path(MODELING_FILE).stem
    fields: dict[str, Any] = {
        "architectures": [stock.__name__],
        layer_key: len(parts),
        modeling.HEAD_SIZE: head_size,
        modeling.HEADS: [p.heads for p in parts],
        modeling.INTERMEDIATE: [p.intermediate for p in parts],
        modeling.KEPT_LAYERS: kept if kept != list(range(original)) else None,
        ORIGINAL_LAYERS: original if original != len(parts) else None,
        VERSION: __version__,
        "auto_map": {
            "AutoConfig": f"{module}.{config_cls.__name__}",
            **{auto: f"{module}.{pruned.__name__}" for auto, _, pruned in entries},
        },
    }
    return fields


def _apply(config: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(config)
    for key, value in fields.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _check_rebuilds(model: nn.Module, fields: dict[str, Any]) -> None:
    """Build the model ``fields`` describe on the meta device: its tensors must have the
    shapes of ``model``'s (the model may lack some, e.g. a pooler, which loading initialises)."""
    _, config_cls, _, pruned = _family(model)
    original: Any = model.config
    config = config_cls.from_dict(_apply(original.to_dict(), fields))
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rebuilt = pruned(config)
        except ValueError as exc:
            raise HFExportError(f"the exported config does not build: {exc}") from None
    expected = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    for name, tensor in model.state_dict().items():
        if name not in expected:
            raise HFExportError(
                f"{type(model).__name__} has tensor {name}, which the model described by the "
                "exported config does not have"
            )
        if tuple(tensor.shape) != expected[name]:
            raise HFExportError(
                f"{name} has shape {tuple(tensor.shape)}, but the exported config describes "
                f"{expected[name]}: only attention heads, FFN neurons and whole layers can be "
                "pruned in an exported model (not the hidden size, for instance)"
            )


def _check_saved_names(directory: Path, model: nn.Module) -> None:
    """The weights were saved under the model's own names, in safetensors files only."""
    from safetensors import safe_open

    pickles = [p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if pickles:
        raise HFExportError(f"transformers wrote pickled weights {pickles}; expected safetensors")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        saved = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    else:
        with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
            saved = set(f.keys())
    unknown = sorted(saved - set(model.state_dict()))
    if unknown:
        raise HFExportError(
            f"transformers saved weights under names the model does not use ({unknown[:3]}); "
            "this transformers version renames checkpoints in a way prunekit does not support"
        )


def tokenizer_files(source: Path) -> list[Path]:
    """Tokenizer / processor / sentence-transformers files and folders in ``source``."""
    if not source.is_dir():
        raise HFExportError(f"tokenizer_dir {source} is not a directory")
    found = [source / n for n in (*TOKENIZER_FILES, *SENTENCE_TRANSFORMERS_FILES)]
    folders = {"1_Pooling"}
    modules = source / "modules.json"
    if modules.is_file():
        try:
            listed = json.loads(modules.read_text(encoding="utf-8"))
            folders |= {m["path"] for m in listed if isinstance(m, dict) and m.get("path")}
        except (json.JSONDecodeError, TypeError) as exc:
            raise HFExportError(
                f"{modules} is not a sentence-transformers modules list: {exc}"
            ) from None
    found += [source / f for f in sorted(folders)]
    found = [f for f in found if f.exists() and f.name not in _MODEL_FILES]
    if not any(f.name in TOKENIZER_FILES for f in found):
        raise HFExportError(
            f"{source} holds no tokenizer or image processor files "
            f"({', '.join(TOKENIZER_FILES[:5])}, ...); copy the tokenizer of the model there"
        )
    return found


def save_pretrained_pruned(
    model: nn.Module,
    directory: str | Path | OutputDir,
    *,
    tokenizer_dir: str | Path | None = None,
    force: bool = False,
    kept_layers: Sequence[int] | None = None,
    extra_files: dict[str, Any] | None = None,
) -> Path:
    """Save a (pruned) BERT, RoBERTa, DistilBERT or ViT model so that
    ``AutoModel.from_pretrained(directory, trust_remote_code=True)`` loads it.

    ``tokenizer_dir``: a directory whose tokenizer / image processor files (and
    sentence-transformers ``modules.json``, ``sentence_bert_config.json``, ``1_Pooling/``)
    are copied beside the model. ``force``: replace an existing ``directory``.
    ``kept_layers``: which layers of the original model the model's layers are, when layers
    were dropped (BERT and RoBERTa layers remember it; other models need it to record it).
    ``extra_files``: file names -> JSON-able objects written beside (e.g. ``prune.json``).
    The directory is written in a staging directory first, then renamed into place; an
    existing one is replaced only with ``force`` and only when it holds a previous output of
    the same writer and nothing else (``prunekit._outputs``). ``directory`` may also be an
    ``OutputDir`` that a command checked before its work.
    """
    target = (
        directory
        if isinstance(directory, OutputDir)
        else check_output_dir(directory, EXPORT_COMMAND, force=force, option="directory")
    )
    fields = pruned_config(model, kept_layers)
    _check_rebuilds(model, fields)
    extra = tokenizer_files(Path(tokenizer_dir).expanduser()) if tokenizer_dir is not None else []

    def writer(tmp: Path) -> None:
        hf_model: Any = model
        options: dict[str, Any] = {}
        if "save_original_format" in inspect.signature(hf_model.save_pretrained).parameters:
            # the module names, not a legacy checkpoint layout: transformers only converts
            # names back when loading its own classes, not subclasses such as ours
            options["save_original_format"] = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_model.save_pretrained(str(tmp), **options)
        _check_saved_names(tmp, model)
        config = json.loads((tmp / CONFIG).read_text(encoding="utf-8"))
        (tmp / CONFIG).write_text(
            json.dumps(_apply(config, fields), indent=2, sort_keys=True) + "\n"
        )
        shutil.copyfile(Path(modeling.__file__), tmp / MODELING_FILE)
        for path in extra:
            if path.is_dir():
                shutil.copytree(path, tmp / path.name)
            else:
                shutil.copyfile(path, tmp / path.name)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=1))

    return target.write(writer)
