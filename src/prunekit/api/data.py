"""``pk.load_data``: a data spec resolved once, reshaped to the model's input, fit / eval split."""

from __future__ import annotations

from typing import Any

from prunekit.data.specs import Data
from prunekit.data.specs import load_data as _load_spec


def input_shape_of(example: Any) -> tuple[int, ...] | None:
    """The shape of one input (no batch dimension) of a single-tensor example, else None."""
    import torch

    from prunekit.inputs import ExampleInputs

    if isinstance(example, ExampleInputs):
        tensors = [*example.args, *example.kwargs.values()]
        example = tensors[0] if len(tensors) == 1 else None
    if isinstance(example, torch.Tensor) and example.dim() >= 2 and example.is_floating_point():
        return tuple(int(s) for s in example.shape[1:])
    return None


def as_data(
    data: Any,
    *,
    example: Any = None,
    seed: int = 0,
    eval_fraction: float | None = None,
) -> Data:
    """``data`` as ``Data``: a spec string is loaded (images sized to ``example``'s height),
    then inputs are reshaped to ``example``'s shape when only the layout differs."""
    from prunekit.data.specs import EVAL_FRACTION
    from prunekit.errors import DataError

    shape = input_shape_of(example) if example is not None else None
    if isinstance(data, str):
        size = shape[-1] if shape is not None and len(shape) == 3 else None
        data = _load_spec(data, seed=seed, eval_fraction=eval_fraction or EVAL_FRACTION,
                         image_size=size)  # fmt: skip
    if not isinstance(data, Data):
        raise DataError(
            f"data must be a data spec string or prunekit Data (pk.data(spec)), got "
            f"{type(data).__name__}"
        )
    return data.shaped_for(shape) if data.task != "embedding" else data


def load_data(spec: str, *, seed: int = 0, eval_fraction: float | None = None) -> Data:
    """Resolve a data spec (see ``prunekit.data.specs``) to its held-out fit / eval parts."""
    return as_data(spec, seed=seed, eval_fraction=eval_fraction)
