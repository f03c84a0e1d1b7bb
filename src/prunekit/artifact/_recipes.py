"""How to build the *original* (unpruned) model again, described as data."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import torch
from torch import nn

from prunekit.errors import ModelSourceError


def build_original(recipe: dict[str, Any]) -> nn.Module:
    """Build the unpruned architecture from a recipe, on the meta device when it can be.

    Weights are not needed (they come from the artifact), so no download ever happens.
    """
    kind = recipe.get("kind")
    try:
        with torch.device("meta"):
            return _build(kind, recipe)
    except ModelSourceError:
        raise
    except Exception:  # a builder that computes with tensors at construction time
        return _build(kind, recipe)


def _build(kind: Any, recipe: dict[str, Any]) -> nn.Module:
    if kind == "torchvision":
        from prunekit.models import torchvision_source

        return torchvision_source.build(
            recipe["name"], model_kwargs=recipe.get("kwargs") or None
        ).model
    if kind == "callable":
        from prunekit.models import callable_source

        return callable_source.build(
            recipe["spec"], model_kwargs=recipe.get("kwargs") or None
        ).model
    if kind == "huggingface":
        from prunekit.models.huggingface_source import _transformers

        transformers = _transformers()
        config_cls = transformers.AutoConfig.for_model(recipe["config"]["model_type"]).__class__
        config = config_cls.from_dict(recipe["config"])
        cls = getattr(transformers, recipe["class"], None)
        if cls is None:
            raise ModelSourceError(
                f"transformers has no class {recipe['class']!r} (artifact recipe)"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(config).eval()
    raise ModelSourceError(f"unknown model recipe kind {kind!r} in the artifact")


def import_class(path: str) -> type:
    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ModelSourceError(f"{path} is not a class")
    return obj
