"""Example inputs: what a model's forward pass is called with, for any batch size.

Models take different inputs: one image tensor (classifiers), several tensors (optical flow),
a list of variable-size images (torchvision detectors), or keyword tensors (Hugging Face).
An ``InputSpec`` describes them once; ``spec.make(batch_size)`` builds concrete
``ExampleInputs`` that every measurement (MACs, latency, export) calls the model with.
Values are drawn from a fixed seed so that two runs see identical inputs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch

from prunekit._checks import got
from prunekit.errors import InputSpecError, InvalidArgumentError, InvalidValueError

_SEED = 0


class InputSpecTypeError(InputSpecError, InvalidArgumentError):
    """Example inputs, or a batch size, of a type no model can be called with."""


class InputSpecValueError(InputSpecError, InvalidValueError):
    """An impossible batch size or input setting (zero, negative, empty)."""


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(_SEED)


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor inside nested tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(map_tensors(v, fn) for v in value)
    if isinstance(value, list):
        return [map_tensors(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value


def flatten_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor inside nested tuples, lists, dicts and dict-like model outputs, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flatten_tensors(v)]
    if isinstance(value, dict) or hasattr(value, "items"):
        return [t for _, v in value.items() for t in flatten_tensors(v)]
    return []


@dataclass(frozen=True)
class ExampleInputs:
    """Concrete positional and keyword arguments for one forward call."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ExampleInputs:
        """Move every tensor to ``device``; cast floating-point tensors to ``dtype`` if given."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return ExampleInputs(map_tensors(self.args, move), map_tensors(self.kwargs, move))

    def call(self, model: Callable[..., Any]) -> Any:
        return model(*self.args, **self.kwargs)

    def tensors(self) -> list[torch.Tensor]:
        return flatten_tensors(self.args) + flatten_tensors(self.kwargs)

    def describe(self) -> str:
        parts = [_describe_value(a) for a in self.args]
        parts += [f"{k}={_describe_value(v)}" for k, v in self.kwargs.items()]
        return ", ".join(parts)


def _describe_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"{dtype}[{','.join(str(d) for d in value.shape)}]"
    if isinstance(value, list):
        return "[" + ", ".join(_describe_value(v) for v in value) + "]"
    return type(value).__name__


class InputSpec(Protocol):
    """Builds ``ExampleInputs`` for any batch size."""

    def make(self, batch_size: int = 1) -> ExampleInputs: ...

    def describe(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


def _check_batch(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise InputSpecTypeError(f"batch size must be a positive integer, got {got(batch_size)}")
    if batch_size < 1:
        raise InputSpecValueError(f"batch size must be a positive integer, got {batch_size}")


@dataclass(frozen=True)
class TensorSpec:
    """One or more positional tensors; ``shapes`` include the batch dimension (first).

    Values are standard-normal floats, or integers in ``[0, integer_high)`` when that is set
    (token ids for a model whose first layer is an embedding).
    """

    shapes: tuple[tuple[int, ...], ...]
    integer_high: int | None = None

    def make(self, batch_size: int = 1) -> ExampleInputs:
        _check_batch(batch_size)
        gen = _generator()
        args = tuple(self._one((batch_size, *s[1:]), gen) for s in self.shapes)
        return ExampleInputs(args)

    def _one(self, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        try:
            if self.integer_high is not None:
                return torch.randint(0, self.integer_high, shape, generator=gen)
            return torch.randn(shape, generator=gen)
        except RuntimeError as exc:  # an allocation this machine cannot make
            size = 4 * math.prod(shape)
            raise InputSpecValueError(
                f"an input of shape {'x'.join(map(str, shape))} ({size / 1e9:.3g} GB) cannot be "
                f"made here ({str(exc).splitlines()[0][:80]}); check --input-shape"
            ) from None

    def describe(self) -> str:
        text = "; ".join("x".join(str(d) for d in s) for s in self.shapes)
        return text + (f" (integers < {self.integer_high})" if self.integer_high else "")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": "tensor", "shapes": [list(s) for s in self.shapes]}
        if self.integer_high is not None:
            data["integer_high"] = self.integer_high
        return data


@dataclass(frozen=True)
class ImageListSpec:
    """A list of ``batch_size`` images [C, H, W], as torchvision detection models take them."""

    image_shape: tuple[int, int, int]

    def make(self, batch_size: int = 1) -> ExampleInputs:
        _check_batch(batch_size)
        gen = _generator()
        images = [torch.rand(self.image_shape, generator=gen) for _ in range(batch_size)]
        return ExampleInputs((images,))

    def describe(self) -> str:
        return "list of images " + "x".join(str(d) for d in self.image_shape)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "image_list", "image_shape": list(self.image_shape)}


@dataclass(frozen=True)
class TokenSpec:
    """Token ids [batch, seq_len] plus an all-ones attention mask, passed as keywords."""

    seq_len: int
    vocab_size: int

    def make(self, batch_size: int = 1) -> ExampleInputs:
        _check_batch(batch_size)
        gen = _generator()
        ids = torch.randint(0, self.vocab_size, (batch_size, self.seq_len), generator=gen)
        mask = torch.ones(batch_size, self.seq_len, dtype=torch.long)
        return ExampleInputs(kwargs={"input_ids": ids, "attention_mask": mask})

    def describe(self) -> str:
        return f"token ids, sequence length {self.seq_len}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "tokens", "seq_len": self.seq_len, "vocab_size": self.vocab_size}


@dataclass(frozen=True)
class KeywordTensorSpec:
    """One float tensor passed by keyword (``pixel_values`` for Hugging Face vision models)."""

    name: str
    shape: tuple[int, ...]

    def make(self, batch_size: int = 1) -> ExampleInputs:
        _check_batch(batch_size)
        x = torch.randn((batch_size, *self.shape[1:]), generator=_generator())
        return ExampleInputs(kwargs={self.name: x})

    def describe(self) -> str:
        return f"{self.name}=" + "x".join(str(d) for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "keyword_tensor", "name": self.name, "shape": list(self.shape)}


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1,3,224,224"`` (or ``1x3x224x224``) into a tuple of positive ints."""
    cleaned = text.strip().strip("()[]").replace("x", ",").replace(" ", "")
    try:
        dims = tuple(int(part) for part in cleaned.split(",") if part != "")
    except ValueError:
        raise InputSpecError(
            f"cannot parse input shape {text!r}: expected comma-separated integers such as 1,3,224,224"
        ) from None
    if not dims or any(d <= 0 for d in dims):
        raise InputSpecError(
            f"input shape {text!r} must be a non-empty list of positive integers, such as 1,3,224,224"
        )
    return dims


def parse_int_list(text: str, what: str) -> list[int]:
    """Parse ``"1,32"`` into ``[1, 32]``; every value must be a positive integer, given once
    (``1,,32`` is a typo, and ``1,1`` would measure the same thing twice)."""
    try:
        values = [int(p) for p in text.replace(" ", "").split(",")]
    except ValueError:
        raise InputSpecError(
            f"cannot parse {what} {text!r}: expected comma-separated positive integers such as 1,32"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise InputSpecError(f"{what} {text!r} must be positive integers, such as 1,32")
    if len(set(values)) != len(values):
        raise InputSpecError(f"{what} {text!r} repeats a value; give each once, such as 1,32")
    return values


def check_example(value: Any, name: str = "inputs") -> None:
    """Raise ``InputSpecTypeError`` (an ``InputSpecError`` and a ``TypeError``) naming
    ``name`` unless ``as_example_inputs`` accepts ``value``."""
    if isinstance(value, (ExampleInputs, torch.Tensor, list, dict, tuple)):
        return
    hint = ""
    if type(value).__name__ == "LoadedModel":
        hint = "; for a LoadedModel pass loaded.model and loaded.input_spec.make()"
    elif callable(getattr(value, "make", None)):
        hint = "; this is an input spec: pass spec.make(batch_size), its inputs for one batch"
    elif isinstance(value, torch.nn.Module):
        hint = "; this is a model: pass the model first, then its inputs"
    raise InputSpecTypeError(
        f"{name} must be a tensor, a tuple of forward arguments, a dict of keyword arguments "
        f"or prunekit.inputs.ExampleInputs, got {got(value)}{hint}"
    )


def as_example_inputs(
    value: ExampleInputs | torch.Tensor | Sequence[Any] | Any, name: str = "inputs"
) -> ExampleInputs:
    """Accept what users naturally pass.

    A tensor or a list (torchvision detectors take a list of images) is the single positional
    argument; a tuple is the positional arguments; a dict is the keyword arguments. Anything
    else raises ``InputSpecTypeError`` naming the argument ``name``.
    """
    check_example(value, name)
    if isinstance(value, ExampleInputs):
        return value
    if isinstance(value, (torch.Tensor, list)):
        return ExampleInputs((value,))
    if isinstance(value, dict):
        return ExampleInputs(kwargs=dict(value))
    return ExampleInputs(cast(tuple[Any, ...], value))  # the positional arguments


def doubled(example: ExampleInputs) -> ExampleInputs:
    """The same inputs with a batch of two: BatchNorm refuses one sample in training mode."""

    def double(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t]) if t.dim() and t.shape[0] == 1 else t

    return ExampleInputs(map_tensors(example.args, double), map_tensors(example.kwargs, double))


def spec_from_dict(data: dict[str, Any]) -> InputSpec:
    """Inverse of ``InputSpec.to_dict``."""
    kind = data.get("kind")
    if kind == "tensor":
        return TensorSpec(tuple(tuple(s) for s in data["shapes"]), data.get("integer_high"))
    if kind == "image_list":
        c, h, w = data["image_shape"]
        return ImageListSpec((c, h, w))
    if kind == "tokens":
        return TokenSpec(data["seq_len"], data["vocab_size"])
    if kind == "keyword_tensor":
        return KeywordTensorSpec(data["name"], tuple(data["shape"]))
    raise InputSpecError(f"unknown input spec kind {kind!r}")
