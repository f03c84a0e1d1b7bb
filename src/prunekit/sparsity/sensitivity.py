"""Per-tensor sensitivity to unstructured sparsity: a resumable JSON file of drop curves.

For every targeted weight tensor and every level of a sweep, that tensor alone is pruned by
magnitude to the level (every other tensor dense), the model is scored, and the weights are
put back. Each point is the *drop* (how much worse the metric got; higher = worse). The file
is rewritten atomically after every tensor, so an interrupted run resumes where it stopped.

The file records a fingerprint of the targeted tensors (names and shapes): a file made for
another model, or for another selection of layers, is refused instead of silently misused.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit._files import read_json
from prunekit._outputs import write_json_atomic
from prunekit.sparsity.masks import SparsityError, magnitude_masks

__all__ = [
    "DEFAULT_LEVELS",
    "FORMAT",
    "measure_layer_sensitivity",
    "read_layer_sensitivity",
    "weights_fingerprint",
]

FORMAT = "prunekit-sparsity-sensitivity"
VERSION = 1
DEFAULT_LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)

Curves = dict[str, dict[float, float]]


def weights_fingerprint(weights: Mapping[str, Tensor]) -> str:
    """A digest of the targeted tensors' names and shapes (not values: a fine-tuned copy of the
    same model keeps its file)."""
    lines = "\n".join(f"{name}:{tuple(w.shape)}" for name, w in weights.items())
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def _read(path: Path) -> dict[str, Any]:
    data = read_json(path, SparsityError, "sensitivity file ")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SparsityError(
            f"{path} is not a prunekit sparsity sensitivity file (made by prunekit sparsify "
            "--allocation sensitivity --sensitivity FILE)"
        )
    if data.get("version") != VERSION:
        raise SparsityError(
            f"{path} has version {data.get('version')}; this prunekit reads {VERSION}"
        )
    return data


def _check_model(data: Mapping[str, Any], weights: Mapping[str, Tensor], path: Path) -> None:
    if data.get("fingerprint") == weights_fingerprint(weights):
        return
    recorded = data.get("layers", {})
    other = sorted(set(recorded) ^ set(weights))
    shapes = [
        n for n in weights if n in recorded and recorded[n].get("shape") != list(weights[n].shape)
    ]
    detail = (
        f"layers differ: {', '.join(other[:4])}" if other
        else f"shapes differ: {', '.join(shapes[:4])}" if shapes
        else "the layer order differs"
    )  # fmt: skip
    raise SparsityError(
        f"sensitivity file {path} was measured on another model or layer selection "
        f"({data.get('model', '?')}; {detail}); measure it again for this one"
    )


def _curve(entry: Any, name: str, path: Path | None) -> dict[float, float]:
    """A layer's [[level, drop], ...] as read from the file, checked: a file edited by hand
    is refused naming the layer, not met by an internal error."""
    points = entry.get("points") if isinstance(entry, Mapping) else None
    try:
        curve = {float(level): float(drop) for level, drop in points}  # type: ignore[union-attr]
    except (TypeError, ValueError):
        curve = {}
    if not curve or not all(0.0 < level < 1.0 and math.isfinite(drop)
                            for level, drop in curve.items()):  # fmt: skip
        raise SparsityError(f"sensitivity file {path} is damaged: layer {name} needs points "
                            "[[level in (0, 1), drop], ...]; measure it again")  # fmt: skip
    return curve


def read_layer_sensitivity(path: str | Path, weights: Mapping[str, Tensor]) -> Curves:
    """The complete curves of ``path`` for exactly these tensors (else a one-line error)."""
    path = Path(path)
    if not path.exists():
        raise SparsityError(f"sensitivity file {path} does not exist")
    data = _read(path)
    _check_model(data, weights, path)
    missing = [n for n in weights if n not in data.get("layers", {})]
    if missing:
        raise SparsityError(
            f"sensitivity file {path} is incomplete ({len(missing)} of {len(weights)} layers not "
            "measured yet); give --data to finish measuring it"
        )
    return {name: _curve(data["layers"][name], name, path) for name in weights}


def measure_layer_sensitivity(
    model: nn.Module,
    weights: Mapping[str, nn.Parameter],
    metric: Callable[[nn.Module], float],
    *,
    levels: Sequence[float] = DEFAULT_LEVELS,
    path: str | Path | None = None,
    settings: Mapping[str, Any] | None = None,
    model_name: str = "",
    log: Callable[[str], object] | None = None,
) -> Curves:
    """Drop curves for every tensor of ``weights`` (parameters of ``model``); see the module
    docstring. ``metric(model)`` returns the drop against the dense model (higher = worse).
    ``settings`` (metric, data, samples...) are recorded; resuming with other settings or
    levels is refused, since the curves would not be comparable."""
    levels = sorted({float(level) for level in levels})
    if not levels or not all(0.0 < level < 1.0 for level in levels):
        raise SparsityError(f"sensitivity levels must be in (0, 1), got {levels}")
    settings = dict(settings or {})
    data: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_name,
        "fingerprint": weights_fingerprint(weights),
        "levels": levels,
        "settings": settings,
        "layers": {},
    }
    file = Path(path) if path is not None else None
    if file is not None and file.exists():
        found = _read(file)
        _check_model(found, weights, file)
        if found.get("levels") != levels or found.get("settings") != json.loads(
            json.dumps(settings)
        ):
            raise SparsityError(
                f"sensitivity file {file} was measured with other settings "
                f"({found.get('settings')}, levels {found.get('levels')}); use a new file"
            )
        data["layers"] = dict(found.get("layers", {}))
    todo = [name for name in weights if name not in data["layers"]]
    if log is not None and file is not None and len(todo) < len(weights):
        log(f"sensitivity: {len(weights) - len(todo)} layers already in {file}, {len(todo)} to go")
    was_training = model.training
    model.eval()
    try:
        for index, name in enumerate(todo, 1):
            weight = weights[name]
            original = weight.detach().clone()
            points = []
            try:
                for level in levels:
                    mask = magnitude_masks({name: original}, {name: level}, "layer")[name]
                    with torch.no_grad():
                        weight.copy_(original.masked_fill(~mask, 0))
                    drop = float(metric(model))
                    points.append([level, drop if math.isfinite(drop) else 1e9])
            finally:
                with torch.no_grad():
                    weight.copy_(original)
            data["layers"][name] = {"shape": list(weight.shape), "numel": weight.numel(),
                                    "points": points}  # fmt: skip
            if file is not None:
                write_json_atomic(file, data)
            if log is not None:
                worst = points[-1][1]
                log(f"sensitivity {index}/{len(todo)}: {name} drop at {levels[-1]:g}: {worst:.4g}")
    finally:
        model.train(was_training)
    return {name: _curve(data["layers"][name], name, file) for name in weights}
