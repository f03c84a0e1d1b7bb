"""A prunekit artifact directory (``prunekit.json`` + ``model.safetensors``)."""

from __future__ import annotations

from pathlib import Path

from prunekit.artifact import load, load_input_spec
from prunekit.inputs import ImageListSpec, InputSpec, KeywordTensorSpec, TensorSpec, TokenSpec
from prunekit.models._guess_inputs import input_spec_for
from prunekit.models._loaded import LoadedModel


def _override(
    saved: InputSpec | None, shapes: list[tuple[int, ...]], seq_len: int | None
) -> InputSpec | None:
    if isinstance(saved, TokenSpec):
        length = shapes[0][-1] if shapes else seq_len
        return TokenSpec(length, saved.vocab_size) if length else saved
    if not shapes:
        return saved
    if isinstance(saved, ImageListSpec):
        _, c, h, w = shapes[0]
        return ImageListSpec((c, h, w))
    if isinstance(saved, KeywordTensorSpec):
        return KeywordTensorSpec(saved.name, shapes[0])
    integer = saved.integer_high if isinstance(saved, TensorSpec) else None
    return TensorSpec(tuple(shapes), integer)


def build(
    path: Path,
    *,
    input_shapes: list[tuple[int, ...]] | None = None,
    seq_len: int | None = None,
    trust_code: bool = False,
) -> LoadedModel:
    model, manifest = load(path, trust_code=trust_code)
    saved = load_input_spec(manifest)
    spec = _override(saved, input_shapes or [], seq_len)
    note = "from --input-shape" if input_shapes else "saved with the artifact"
    if spec is None:
        spec, note = input_spec_for(model, input_shapes)
    recipe = manifest["recipe"]
    return LoadedModel(
        model=model,
        name=str(path),
        source="artifact",
        input_spec=spec,
        task=manifest.get("task", "unknown"),
        input_note=note,
        details={"original": recipe.get("name") or recipe.get("spec") or recipe.get("class")},
        recipe=recipe,
    )
