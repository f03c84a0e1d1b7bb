"""Turn the string a user typed into a model: the single entry point of every command."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from prunekit.errors import ModelSourceError
from prunekit.models import callable_source, huggingface_source, torchvision_source
from prunekit.models._loaded import LoadedModel

_MODEL_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".onnx", ".safetensors", ".py")


def _looks_like_path(spec: str) -> bool:
    return (
        "/" in spec or "\\" in spec or spec.startswith(".") or spec.endswith(_MODEL_FILE_SUFFIXES)
    )


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    input_shapes: list[tuple[int, ...]] | None = None,
    seq_len: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    trust_code: bool = False,
    seed: int | None = 0,
) -> LoadedModel:
    """Resolve ``spec`` (torchvision name, ``module:callable``, ``file.py:callable`` or a
    Hugging Face directory) to a model in eval mode plus the inputs to run it with.

    ``input_shapes`` (batch dimension first) replaces the model's default inputs; ``weights``
    is passed to torchvision (e.g. ``"DEFAULT"``); ``model_kwargs`` to a torchvision builder
    or to the user's callable. ``trust_code``: let a prunekit artifact run the user code its
    recipe names (see ``prunekit.artifact``); ``trust_remote_code``: let a Hugging Face
    directory run its own modeling code. ``seed``: the random initialisation of a model built
    from scratch (torchvision without weights, a callable, weights a checkpoint lacks) is
    seeded with it, without changing the caller's random state (None: not seeded). Raises
    ``ModelSourceError`` with a one-line reason.
    """
    from prunekit._checks import check_type

    check_type(spec, str, "spec", "a model name, module:callable, file.py:callable or directory")
    if seed is not None:
        check_type(seed, int, "seed", "an integer such as 0")
    import torch

    with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        loaded = _load(spec, weights, input_shapes, seq_len, model_kwargs, trust_remote_code,
                       trust_code)  # fmt: skip
    loaded.seed = seed
    return loaded


def _load(
    spec: str,
    weights: str | None,
    input_shapes: list[tuple[int, ...]] | None,
    seq_len: int | None,
    model_kwargs: dict[str, Any] | None,
    trust_remote_code: bool,
    trust_code: bool,
) -> LoadedModel:
    spec = spec.strip()
    if not spec:
        raise ModelSourceError("no model given")
    if weights is not None and callable_source.looks_like_callable_spec(spec):
        raise ModelSourceError("--weights applies to torchvision models only")
    if callable_source.looks_like_callable_spec(spec):
        return callable_source.build(spec, input_shapes=input_shapes, model_kwargs=model_kwargs)
    path = Path(spec).expanduser()
    if path.is_dir():
        # a directory holds its model whole: options that build another one were dropped
        kind = "prunekit artifact" if (path / "prunekit.json").is_file() else "model directory"
        if weights is not None:
            raise ModelSourceError(f"--weights applies to torchvision models, not to a {kind} "
                                   f"({path} holds its own weights)")  # fmt: skip
        if model_kwargs:
            raise ModelSourceError(f"--model-kwargs builds a model from code; {path} is a {kind}, "
                                   "already built")  # fmt: skip
        if (path / "prunekit.json").is_file():
            from prunekit.models import artifact_source

            return artifact_source.build(
                path, input_shapes=input_shapes, seq_len=seq_len, trust_code=trust_code
            )
        if huggingface_source.is_hf_dir(path):
            return huggingface_source.build(
                path,
                input_shapes=input_shapes,
                seq_len=seq_len,
                trust_remote_code=trust_remote_code,
            )
        raise ModelSourceError(
            f"{path} is a directory but not a model directory: no prunekit.json (prunekit "
            "artifact) or config.json (Hugging Face)"
        )
    if path.is_file():
        raise ModelSourceError(
            f"{path} is a file; prunekit does not unpickle model files. Point it at a "
            "function that builds the model and loads the weights: path/to/file.py:build_model"
        )
    if _looks_like_path(spec):
        raise ModelSourceError(f"no such file or directory: {spec}")
    return torchvision_source.build(
        spec, weights=weights, input_shapes=input_shapes, model_kwargs=model_kwargs
    )
