"""A Hugging Face model directory (``config.json`` + weights), loaded offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from prunekit._utils import describe_exception
from prunekit.errors import ModelSourceError, PrunekitError
from prunekit.inputs import InputSpec, KeywordTensorSpec, TokenSpec
from prunekit.models._loaded import LoadedModel

DEFAULT_SEQ_LEN = 128


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ModelSourceError(
            "loading a Hugging Face model directory needs transformers: pip install 'prunekit[hf]'"
        ) from None
    # Its weight-loading progress bar would be noise on stderr, where one-line errors go.
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _model_class(transformers: Any, config: Any) -> Any:
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def input_spec(
    config: Any, input_shapes: list[tuple[int, ...]] | None, seq_len: int | None
) -> tuple[InputSpec, str]:
    """Pixels for vision configs (``image_size`` + ``num_channels``), token ids otherwise."""
    if hasattr(config, "image_size") and hasattr(config, "num_channels"):
        if input_shapes:
            return KeywordTensorSpec("pixel_values", input_shapes[0]), "from --input-shape"
        side = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        shape = (1, config.num_channels, side, side)
        return KeywordTensorSpec("pixel_values", shape), f"{side}x{side}, the config's image_size"
    vocab = getattr(config, "vocab_size", None)
    if vocab is None:
        raise ModelSourceError(
            f"cannot tell what {type(config).__name__} takes as input (no vocab_size or "
            "image_size in config.json)"
        )
    limit = getattr(config, "max_position_embeddings", None)
    if input_shapes:
        length, note = input_shapes[0][-1], "from --input-shape"
    elif seq_len:
        length, note = seq_len, "from --seq-len"
    else:
        length = min(DEFAULT_SEQ_LEN, limit) if limit else DEFAULT_SEQ_LEN
        note = f"sequence length {length} (default; --seq-len to change)"
    if limit and length > limit:
        raise ModelSourceError(
            f"sequence length {length} exceeds the model's max_position_embeddings ({limit})"
        )
    return TokenSpec(length, vocab), note


def build(
    path: Path,
    *,
    input_shapes: list[tuple[int, ...]] | None = None,
    seq_len: int | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    transformers = _transformers()
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"cannot read {path / 'config.json'}: {exc}") from exc
    from prunekit.hf.load import is_pruned_config, load_pruned

    # a prunekit export: loaded with prunekit's own copy of its modeling code
    pruned = is_pruned_config(raw)
    if "auto_map" in raw and not trust_remote_code and not pruned:
        raise ModelSourceError(
            f"{path} defines its own model code (auto_map in config.json); "
            "pass --trust-remote-code if you trust it"
        )
    try:
        if pruned:
            model: nn.Module = load_pruned(path)
            config: Any = model.config
        else:
            config = transformers.AutoConfig.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=trust_remote_code
            )
            cls = _model_class(transformers, config)
            model = cls.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=trust_remote_code
            )
    except (OSError, ValueError, KeyError, PrunekitError) as exc:
        raise ModelSourceError(
            f"cannot load Hugging Face model from {path}: {describe_exception(exc)}"
        ) from exc
    model.eval()
    spec, note = input_spec(config, input_shapes, seq_len)
    return LoadedModel(
        model=model,
        name=str(path),
        source="huggingface",
        input_spec=spec,
        task="vision" if isinstance(spec, KeywordTensorSpec) else "text",
        input_note=note,
        details={"model_type": getattr(config, "model_type", None), "class": type(model).__name__},
        recipe={
            "kind": "huggingface",
            # a prunekit export's stock class: build_original() makes it from transformers
            "class": (raw.get("architectures") or [type(model).__name__])[0]
            if pruned
            else type(model).__name__,
            "config": json.loads(config.to_json_string()),
        },
    )
