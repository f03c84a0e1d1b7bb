"""torchvision models by name, with their natural input shape and optional pretrained weights."""

from __future__ import annotations

import difflib
import inspect
import urllib.error
import warnings
from functools import cache
from typing import Any

import torch
from torch import nn

from prunekit.errors import ModelSourceError
from prunekit.inputs import ImageListSpec, InputSpec, TensorSpec
from prunekit.models._loaded import LoadedModel

# Input sizes for families whose weights do not carry a crop size.
_DETECTION_IMAGE = (3, 480, 640)
_FLOW_SHAPE = (1, 3, 368, 496)  # RAFT needs sides divisible by 8
_VIDEO_FRAMES = 16  # the longest min_temporal_size among torchvision's video weights


@cache
def models_by_task() -> dict[str, list[str]]:
    import torchvision.models as tvm

    modules = {
        "classification": tvm,
        "detection": tvm.detection,
        "segmentation": tvm.segmentation,
        "video": tvm.video,
        "optical_flow": tvm.optical_flow,
        "quantized_classification": tvm.quantization,
    }
    return {task: tvm.list_models(module=mod) for task, mod in modules.items()}


def task_of(name: str) -> str | None:
    for task, names in models_by_task().items():
        if name in names:
            return task
    return None


def all_names() -> list[str]:
    return sorted(n for names in models_by_task().values() for n in names)


def unknown_name_error(name: str) -> ModelSourceError:
    close = difflib.get_close_matches(name, all_names(), n=4, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ModelSourceError(
        f"unknown model {name!r}.{hint} A model is a torchvision model name "
        "(see `prunekit models`), package.module:callable, path/to/file.py:callable, "
        "or a Hugging Face model directory."
    )


def _first_weights(name: str) -> Any:
    from torchvision.models import get_model_weights

    try:
        return next(iter(get_model_weights(name)))
    except (ValueError, StopIteration):
        return None


def default_input_spec(name: str, task: str) -> tuple[InputSpec, str]:
    """The input a model of this family is normally run at, and a note on where it came from."""
    weights = _first_weights(name)
    transforms = weights.transforms() if weights is not None else None
    crop = getattr(transforms, "crop_size", None)
    if task in ("classification", "quantized_classification"):
        side = crop[0] if crop else 224
        return TensorSpec(((1, 3, side, side),)), f"{side}x{side}, the crop size of {weights}"
    if task == "segmentation":
        side = (getattr(transforms, "resize_size", None) or [520])[0]
        return TensorSpec(((1, 3, side, side),)), f"{side}x{side}, the resize size of {weights}"
    if task == "video":
        h, w = crop if crop else (112, 112)
        spec = TensorSpec(((1, 3, _VIDEO_FRAMES, h, w),))
        return spec, f"{_VIDEO_FRAMES} frames of {h}x{w}, the crop size of {weights}"
    if task == "detection":
        return ImageListSpec(_DETECTION_IMAGE), "one 480x640 image (detectors resize internally)"
    if task == "optical_flow":
        return TensorSpec((_FLOW_SHAPE, _FLOW_SHAPE)), "two 368x496 frames"
    return TensorSpec(((1, 3, 224, 224),)), "224x224"


def spec_from_shapes(task: str, shapes: list[tuple[int, ...]]) -> InputSpec:
    if task == "detection":
        if len(shapes) != 1 or len(shapes[0]) != 4:
            raise ModelSourceError(
                "detection models take images: give one --input-shape B,C,H,W (e.g. 1,3,480,640)"
            )
        _, c, h, w = shapes[0]
        return ImageListSpec((c, h, w))
    return TensorSpec(tuple(shapes))


def _builder_kwargs(name: str, weights: str | None) -> dict[str, Any]:
    from torchvision.models import get_model_builder

    params = inspect.signature(get_model_builder(name)).parameters
    kwargs: dict[str, Any] = {}
    if "progress" in params:
        kwargs["progress"] = False  # a progress bar would break the one-line error offline
    # Detection and segmentation builders download an ImageNet backbone by default even
    # when no weights are asked for; a random-weight model must never touch the network.
    if weights is None and "weights_backbone" in params:
        kwargs["weights_backbone"] = None
    if "init_weights" in params and weights is None:
        kwargs["init_weights"] = True  # silences torchvision's FutureWarning, same behaviour
    return kwargs


def _download_error(name: str, weights: str, exc: BaseException) -> ModelSourceError:
    url = ""
    try:
        from torchvision.models import get_weight

        url = get_weight(f"{_weights_enum_name(name)}.{weights}").url
    except Exception:
        pass
    where = torch.hub.get_dir() + "/checkpoints/"
    return ModelSourceError(
        f"could not download weights {weights!r} for {name}"
        + (f" from {url}" if url else "")
        + f": {exc}. Without internet, put the file in {where} and run again."
    )


def _weight_names(name: str) -> list[str]:
    from torchvision.models import get_model_weights

    try:
        return ["DEFAULT", *(w.name for w in get_model_weights(name))]
    except ValueError:
        return []


def _weights_enum_name(name: str) -> str:
    from torchvision.models import get_model_weights

    return get_model_weights(name).__name__


def build(
    name: str,
    *,
    weights: str | None = None,
    input_shapes: list[tuple[int, ...]] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    from torchvision.models import get_model

    task = task_of(name)
    if task is None:
        raise unknown_name_error(name)
    kwargs = {**_builder_kwargs(name, weights), **(model_kwargs or {})}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model: nn.Module = get_model(name, weights=weights, **kwargs)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise _download_error(name, weights or "", exc) from exc
    except KeyError as exc:
        if weights is None:
            raise
        raise ModelSourceError(
            f"invalid --weights {weights!r} for {name}; valid: {', '.join(_weight_names(name))}"
        ) from exc
    except (ValueError, TypeError) as exc:
        raise ModelSourceError(f"cannot build torchvision model {name}: {exc}") from exc
    except RuntimeError as exc:
        if weights is not None and isinstance(exc.__cause__, (urllib.error.URLError, OSError)):
            raise _download_error(name, weights, exc) from exc
        raise
    model.eval()
    if input_shapes:
        spec, note = spec_from_shapes(task, input_shapes), "from --input-shape"
    else:
        spec, note = default_input_spec(name, task)
    return LoadedModel(
        model=model,
        name=name,
        source="torchvision",
        input_spec=spec,
        task=task,
        input_note=note,
        details={"weights": weights},
        recipe={"kind": "torchvision", "name": name, "kwargs": model_kwargs or {}},
    )
