"""Weight masks for unstructured and N:M sparsity, and a ``MaskSet`` that keeps them applied.

A mask is a bool tensor shaped like its parameter, True = keep. Masks are computed from an
importance score (``|w|`` by default) and then enforced on the real parameters, not through a
reparametrisation like ``torch.nn.utils.prune`` (``weight_orig * weight_mask``): that changes
``state_dict`` keys and breaks code that reads ``module.weight``. ``MaskSet`` instead zeroes
the parameters in place and keeps them zero during fine-tuning with two kinds of hooks:

* a gradient hook on each masked parameter zeroes the gradient of pruned entries, so
  momentum / Adam moments never build up for them (otherwise a later mask update or
  ``detach`` would let stale momentum regrow them);
* an optimizer step post-hook re-applies the masks after every step, because weight decay
  and some optimizers move weights even where the gradient is zero.

Once fine-tuning is done, ``make_permanent`` removes every hook: what remains is a plain
model whose pruned weights are zeros.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from prunekit._checks import check_module, got
from prunekit.errors import InvalidArgumentError, InvalidValueError, PrunekitError

Scope = Literal["global", "layer"]
_SCOPES = ("global", "layer")

__all__ = ["MaskSet", "Scope", "SparsityError", "holds_nm", "magnitude_masks", "nm_mask"]


class SparsityError(PrunekitError):
    """A sparsity level, mask, N:M pattern or parameter name given by the user is invalid."""


class SparsityTypeError(SparsityError, InvalidArgumentError):
    """An argument of the wrong type (also a ``TypeError``)."""


class SparsityValueError(SparsityError, InvalidValueError):
    """An argument with an impossible value (also a ``ValueError``)."""


# ---------------------------------------------------------------------------------------------
# validation helpers (shared with schedule.py)


def _names_hint(names: Iterable[str], limit: int = 20) -> str:
    """A sorted, bounded list of names for an error message (models can have thousands)."""
    ordered = sorted(names)
    if not ordered:
        return "(none)"
    more = len(ordered) - limit
    return ", ".join(ordered[:limit]) + (f", ... ({more} more)" if more > 0 else "")


def _unknown_names_error(unknown: Iterable[str], valid: Iterable[str], what: str) -> SparsityError:
    listed = ", ".join(repr(name) for name in sorted(unknown))
    return SparsityError(f"unknown {what}: {listed}; valid names: {_names_hint(valid)}")


def _check_sparsity(value: Any, what: str) -> float:
    # 1.0 is rejected on purpose: pruning every weight of a tensor is never what a user means,
    # and it usually comes from passing a percentage (e.g. 90) scaled wrongly.
    message = f"{what} must be a number in [0, 1), got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SparsityTypeError(message)
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise SparsityValueError(message)
    return float(value)


def _check_nm(n: Any, m: Any) -> tuple[int, int]:
    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    message = f"N:M sparsity needs integers with 0 < n <= m, got n={n!r}, m={m!r}"
    if not (is_int(n) and is_int(m)):
        raise SparsityTypeError(message)
    if not 0 < n <= m:
        raise SparsityValueError(message)
    return n, m


def _check_scope(scope: Any) -> None:
    message = f"scope must be 'global' or 'layer', got {scope!r}"
    if not isinstance(scope, str):
        raise SparsityTypeError(message)
    if scope not in _SCOPES:
        raise SparsityValueError(message)


def _check_tensors(value: Any, name: str, example: str, *, optional: bool = False) -> None:
    """``value`` must be a mapping of names to tensors (or None when ``optional``)."""
    if optional and value is None:
        return
    if not callable(getattr(value, "items", None)):  # a dict, or an nn.ParameterDict
        hint = ""
        if isinstance(value, nn.Module):
            hint = "; for a model pass dict(model.named_parameters()), or only the weights to prune"
        raise SparsityTypeError(f"{name} must be a dict of {example}, got {got(value)}{hint}")
    for key, tensor in value.items():
        if not isinstance(tensor, Tensor):
            raise SparsityTypeError(
                f"{name}[{key!r}] must be a tensor ({name} is a dict of {example}), "
                f"got {got(tensor)}"
            )


# ---------------------------------------------------------------------------------------------
# unstructured magnitude masks


def _lowest_k(flat: Tensor, k: int) -> Tensor:
    """Bool flags marking the ``k`` smallest entries of a 1-D tensor, ties to the lower index.

    A threshold alone (``flat <= kthvalue``) would prune every entry tied with it, so more
    than ``k``; the ties are split by position instead (a cumulative count), which is
    deterministic on every device and linear in size, unlike a full sort.
    """
    if k <= 0:
        return torch.zeros_like(flat, dtype=torch.bool)
    threshold = torch.kthvalue(flat, k).values
    below = flat < threshold
    ties = flat == threshold
    still_needed = k - int(below.sum())
    return below | (ties & (torch.cumsum(ties, dim=0) <= still_needed))


def _score_dtype(scores: Iterable[Tensor]) -> torch.dtype:
    # float32 at least: kthvalue lacks half-precision kernels on some devices, and the cast is
    # exact, so the ranking is unchanged
    return torch.float64 if any(s.dtype == torch.float64 for s in scores) else torch.float32


def _importance(
    weights: Mapping[str, Tensor], scores: Mapping[str, Tensor] | None
) -> dict[str, Tensor]:
    if scores is None:
        chosen = {name: weight.detach().abs() for name, weight in weights.items()}
    else:
        missing = set(weights) - set(scores)
        if missing:
            listed = ", ".join(repr(name) for name in sorted(missing))
            raise SparsityError(f"scores are missing for {listed}; give a score for every weight")
        extra = set(scores) - set(weights)
        if extra:
            raise _unknown_names_error(extra, weights, "score name(s)")
        chosen = {name: scores[name].detach() for name in weights}
    for name, score in chosen.items():
        if score.shape != weights[name].shape:
            raise SparsityError(
                f"score of {name!r} has shape {tuple(score.shape)}, "
                f"its weight {tuple(weights[name].shape)}"
            )
        if score.is_floating_point() and bool(torch.isnan(score).any()):
            raise SparsityError(f"importance of {name!r} contains NaN; cannot rank its weights")
    return chosen


def _layer_mask(score: Tensor, sparsity: float) -> Tensor:
    flat = score.reshape(-1).to(_score_dtype([score]))
    pruned = _lowest_k(flat, round(sparsity * flat.numel()))
    return (~pruned).reshape(score.shape)


def _global_masks(importance: Mapping[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    if not importance:
        return {}
    names = list(importance)
    device = importance[names[0]].device
    dtype = _score_dtype(importance.values())
    flat = torch.cat([importance[n].reshape(-1).to(device=device, dtype=dtype) for n in names])
    pruned = _lowest_k(flat, round(sparsity * flat.numel()))
    sizes = [importance[name].numel() for name in names]
    return {
        name: (~part).reshape(importance[name].shape).to(importance[name].device)
        for name, part in zip(names, torch.split(pruned, sizes), strict=True)
    }


def _layer_sparsities(names: list[str], sparsity: float | Mapping[str, float]) -> dict[str, float]:
    if isinstance(sparsity, Mapping):
        unknown = set(sparsity) - set(names)
        if unknown:
            raise _unknown_names_error(unknown, names, "tensor name(s) in the sparsity mapping")
        return {
            name: _check_sparsity(sparsity.get(name, 0.0), f"sparsity of {name!r}")
            for name in names
        }
    value = _check_sparsity(sparsity, "sparsity")
    return dict.fromkeys(names, value)


def magnitude_masks(
    weights: Mapping[str, Tensor],
    sparsity: float | Mapping[str, float],
    scope: Scope = "global",
    scores: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Bool masks (True = keep) that prune the least important weights.

    ``scope="layer"``: each tensor loses ``round(s * numel)`` weights, ``s`` being ``sparsity``
    or, for a mapping, its entry for that tensor (0 for a tensor it does not name).
    ``scope="global"``: one ranking across all tensors; exactly ``round(sparsity * total)``
    weights are pruned overall, so layers with small weights lose more. ``scores`` replaces
    ``|w|`` as the importance (larger = more important). Ties are broken deterministically:
    among equal scores the one earlier in flattened order (tensors in mapping order) is pruned.
    """
    _check_tensors(weights, "weights", "parameter names to weight tensors")
    if not isinstance(sparsity, Mapping):
        _check_sparsity(sparsity, "sparsity")
    _check_scope(scope)
    _check_tensors(scores, "scores", "weight names to importance tensors", optional=True)
    importance = _importance(weights, scores)
    if scope == "layer":
        targets = _layer_sparsities(list(weights), sparsity)
        return {name: _layer_mask(score, targets[name]) for name, score in importance.items()}
    if isinstance(sparsity, Mapping):
        raise SparsityError(
            "scope='global' takes one sparsity for all tensors; "
            "use scope='layer' for per-tensor sparsities"
        )
    return _global_masks(importance, _check_sparsity(sparsity, "sparsity"))


# ---------------------------------------------------------------------------------------------
# N:M masks


def _nm_keep(scores: Tensor, n: int, m: int, dim: int) -> Tensor:
    """Keep the ``n`` highest scores in each block of ``m`` consecutive entries along ``dim``.

    Inputs are assumed valid (see ``nm_mask``). A stable descending sort keeps, among equal
    scores, the earlier entry, so the pattern is reproducible (e.g. for all-zero blocks).
    """
    moved = scores.movedim(dim, -1)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    order = torch.sort(blocks, dim=-1, descending=True, stable=True).indices[..., :n]
    keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, order, True)
    return keep.reshape(moved.shape).movedim(-1, dim)


def _check_nm_shape(shape: torch.Size, m: int, dim: int, what: str) -> int:
    """Validate ``dim`` for a tensor of ``shape``; returns it as a non-negative index."""
    if len(shape) == 0:
        raise SparsityError(f"N:M sparsity needs a tensor with at least one dimension ({what})")
    if not -len(shape) <= dim < len(shape):
        raise SparsityError(f"dim {dim} is out of range for {what} of shape {tuple(shape)}")
    dim %= len(shape)
    if shape[dim] % m:
        raise SparsityError(
            f"N:M sparsity with m={m} needs the size along dim {dim} to be divisible by {m}; "
            f"{what} has shape {tuple(shape)}"
        )
    return dim


def nm_mask(weight: Tensor, n: int, m: int, dim: int = -1) -> Tensor:
    """Bool mask keeping the ``n`` largest-magnitude weights of every ``m`` consecutive along ``dim``.

    ``nm_mask(w, 2, 4)`` is the 2:4 pattern sparse tensor cores accelerate (use the input
    dimension: ``dim=1`` for Linear and Conv weights). Ties keep the earlier element.
    """
    if not isinstance(weight, Tensor):
        raise SparsityTypeError(
            f"weight must be a tensor (such as model.fc.weight), got {got(weight)}"
        )
    n, m = _check_nm(n, m)
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise SparsityTypeError(f"dim must be an integer such as 1 or -1, got {got(dim)}")
    dim = _check_nm_shape(weight.shape, m, dim, "the weight")
    return _nm_keep(weight.detach().abs(), n, m, dim)


def holds_nm(weight: Tensor, n: int, m: int, dim: int = 1) -> bool:
    """Whether every group of ``m`` consecutive weights along ``dim`` has exactly ``n``
    non-zeros (what ``nm_mask`` keeps, and what 2:4 sparse kernels require); False where the
    dimension does not split into groups of ``m``."""
    if weight.dim() < 2 or weight.shape[dim] % m:
        return False
    kept = (weight.detach() != 0).movedim(dim, -1)
    counts = kept.reshape(*kept.shape[:-1], -1, m).sum(-1)
    return bool((counts == n).all())


# ---------------------------------------------------------------------------------------------
# MaskSet


class MaskSet:
    """Masks for a model's parameters, enforced in place during fine-tuning.

    ``masks`` are keyed by qualified parameter name (``model.named_parameters()``). Typical use::

        with MaskSet(model, masks).attach(optimizer) as mask_set:
            train(model, optimizer)       # pruned weights stay exactly zero
        # leaving the block detached every hook

    Masks are never modified in place: ``update`` replaces them, so a dict obtained from
    ``masks`` stays a snapshot.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor]) -> None:
        check_module(model)
        if not isinstance(masks, Mapping):
            raise SparsityTypeError(
                f"masks must be a dict of parameter names to bool tensors, got {got(masks)}"
            )
        self._model = model
        # remove_duplicate=False so that any alias of a tied parameter is accepted
        self._params: dict[str, nn.Parameter] = dict(model.named_parameters(remove_duplicate=False))
        self._masks: dict[str, Tensor] = self._validated(masks)
        self._grad_handles: dict[str, RemovableHandle] = {}
        self._step_handles: list[RemovableHandle] = []

    def _validated(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        unknown = set(masks) - set(self._params)
        if unknown:
            raise _unknown_names_error(unknown, self._params, "parameter name(s) in masks")
        checked = {}
        for name, mask in masks.items():
            param = self._params[name]
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
                raise SparsityError(f"mask of {name!r} must be a bool tensor, got {got}")
            if mask.shape != param.shape:
                raise SparsityError(
                    f"mask of {name!r} has shape {tuple(mask.shape)}, "
                    f"the parameter {tuple(param.shape)}"
                )
            # a private copy: the caller mutating its tensor later must not change the masks
            checked[name] = mask.detach().to(param.device, copy=True)
        return checked

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def masks(self) -> dict[str, Tensor]:
        """The current masks (a new dict; the tensors must not be modified in place)."""
        return dict(self._masks)

    @property
    def attached(self) -> bool:
        return bool(self._step_handles or self._grad_handles)

    def _mask_on(self, name: str, device: torch.device) -> Tensor:
        # the model may have been moved (``model.to``) after the masks were made
        mask = self._masks[name]
        if mask.device != device:
            mask = self._masks[name] = mask.to(device)
        return mask

    def apply(self) -> None:
        """Zero every masked weight in place."""
        with torch.no_grad():
            for name in self._masks:
                param = self._params[name]
                param.masked_fill_(~self._mask_on(name, param.device), 0)

    def _mask_grad(self, name: str, grad: Tensor) -> Tensor:
        # masked_fill rather than a multiplication: a NaN/inf gradient times 0 is still NaN
        return grad.masked_fill(~self._mask_on(name, grad.device), 0)

    def _register_grad_hooks(self) -> None:
        for name in self._masks:
            param = self._params[name]
            # frozen parameters get no gradient (and refuse hooks); the step hook still
            # re-zeroes them if they are unfrozen later
            if name in self._grad_handles or not param.requires_grad:
                continue
            hook = functools.partial(self._mask_grad, name)
            self._grad_handles[name] = param.register_hook(hook)

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self.apply()

    def attach(self, optimizer: Optimizer) -> MaskSet:
        """Keep the masks applied through ``optimizer``'s steps; applies them now. Returns self.

        May be called for several optimizers; gradient hooks are registered once.
        """
        self._register_grad_hooks()
        self._step_handles.append(optimizer.register_step_post_hook(self._after_step))
        self.apply()
        return self

    def hold_gradients(self) -> MaskSet:
        """Mask the gradients of pruned entries and apply the masks, without an optimizer
        hook: for a training loop that owns (and may rebuild) its optimizer and calls
        ``apply()`` after each step itself. Returns self."""
        self._register_grad_hooks()
        self.apply()
        return self

    def detach(self) -> None:
        """Remove every hook this MaskSet registered (weights are left as they are)."""
        for handle in [*self._grad_handles.values(), *self._step_handles]:
            handle.remove()
        self._grad_handles.clear()
        self._step_handles.clear()

    def update(self, masks: Mapping[str, Tensor]) -> None:
        """Replace the masks of the named parameters (or add new ones) and apply them all."""
        self._masks.update(self._validated(masks))
        if self.attached:
            self._register_grad_hooks()
        self.apply()

    def sparsity(self) -> dict[str, float]:
        """Fraction of each masked parameter that the mask prunes."""
        return {
            name: 1.0 - int(mask.sum()) / mask.numel() if mask.numel() else 0.0
            for name, mask in self._masks.items()
        }

    def overall_sparsity(self) -> float:
        """Fraction of all masked entries (over every masked parameter) that are pruned."""
        total = sum(mask.numel() for mask in self._masks.values())
        kept = sum(int(mask.sum()) for mask in self._masks.values())
        return 1.0 - kept / total if total else 0.0

    def make_permanent(self) -> dict[str, Tensor]:
        """Apply the masks a last time, remove every hook, and return the masks."""
        self.apply()
        self.detach()
        return self.masks

    def __enter__(self) -> MaskSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.detach()

    def __repr__(self) -> str:
        return (
            f"MaskSet({len(self._masks)} masks, {self.overall_sparsity():.1%} pruned, "
            f"attached={self.attached})"
        )
