"""Which weights to sparsify, and how sparse each layer should be for one overall target.

Three allocations of an overall sparsity ``S`` over the targeted tensors (``S`` counts pruned
weights over all targeted weights):

* ``uniform``: every tensor at ``S``;
* ``global``: the per-tensor shares a single magnitude ranking of all targeted weights gives
  (Gale et al. 2019, "The State of Sparsity in Deep Neural Networks"), with a per-tensor
  *floor*: no tensor keeps less than ``floor`` of its weights; what a capped tensor cannot
  give is taken from the others by raising the shared threshold (water-filling);
* ``sensitivity``: from per-tensor curves (metric drop when that tensor alone is pruned to
  each level, the others dense), the least summed predicted drop whose pruned count meets
  ``S``, under the same floor. Tensors that can lose more lose more.

The shares are computed once, on the dense weights; a gradual schedule then moves every tensor
along its own cubic ramp to its share (``GradualPruner(scope="layer")``).
"""

from __future__ import annotations

import fnmatch
import itertools
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from prunekit.sparsity.masks import SparsityError
from prunekit.sparsity.schedule import _PRUNABLE

__all__ = [
    "ALLOCATIONS",
    "allocate_global",
    "allocate_sensitivity",
    "allocate_uniform",
    "nm_eligible",
    "target_weights",
]

ALLOCATIONS = ("uniform", "global", "sensitivity")
# below this many weights a tensor is not worth a mask (a classifier bias-sized layer)
_MIN_WEIGHTS = 16


def _matches(name: str, patterns: Sequence[str]) -> bool:
    # a pattern matches the module name or the parameter name, as a glob or a dotted prefix
    module = name.rpartition(".")[0]
    return any(
        fnmatch.fnmatchcase(name, p)
        or fnmatch.fnmatchcase(module, p)
        or module == p
        or module.startswith(p + ".")
        for p in patterns
    )


def target_weights(
    model: nn.Module,
    *,
    ignore: Sequence[str] = (),
    only: Sequence[str] = (),
) -> dict[str, nn.Parameter]:
    """The ``weight`` of every Linear / Conv layer, by parameter name, in model order.

    ``only``: keep just the layers matching one of these patterns (glob or module prefix,
    e.g. ``encoder.*`` or ``layer4``); ``ignore``: drop those matching one. A tied weight
    (an embedding shared with a decoder) is taken once. An empty result is an error that
    says why.
    """
    seen: set[int] = set()
    found: dict[str, nn.Parameter] = {}
    layers: list[str] = []
    for module_name, module in model.named_modules():
        if not isinstance(module, _PRUNABLE):
            continue
        weight = module.weight
        name = f"{module_name}.weight" if module_name else "weight"
        layers.append(name)
        if (
            not isinstance(weight, nn.Parameter)
            or id(weight) in seen
            or weight.numel() < _MIN_WEIGHTS
        ):
            continue
        if only and not _matches(name, only):
            continue
        if ignore and _matches(name, ignore):
            continue
        seen.add(id(weight))
        found[name] = weight
    _check_patterns(layers, only, "--layers")
    _check_patterns(layers, ignore, "--ignore")
    if not found:
        why = "after --layers/--ignore " if (only or ignore) else ""
        raise SparsityError(
            f"no Linear or Conv weight is left to sparsify {why}in this model"
            + (f" (--layers {' '.join(only)})" if only else "")
            + (f" (--ignore {' '.join(ignore)})" if ignore else "")
        )
    return found


def _check_patterns(layers: Sequence[str], patterns: Sequence[str], option: str) -> None:
    """A pattern that matches no Linear / Conv layer is a typo, not a choice: the layer meant
    would be sparsified (``--ignore``) or left dense (``--layers``) without a word."""
    for pattern in patterns:
        if not any(_matches(name, [pattern]) for name in layers):
            shown = ", ".join(n.removesuffix(".weight") for n in layers[:8])
            more = f" and {len(layers) - 8} more" if len(layers) > 8 else ""
            raise SparsityError(f"{option} {pattern!r} matches no Linear or Conv layer of this "
                                f"model (its layers: {shown}{more})")  # fmt: skip


def nm_eligible(weight: Tensor, m: int) -> bool:
    """N:M groups run along the input dimension (dim 1): it must split into groups of ``m``."""
    return weight.dim() >= 2 and weight.shape[1] % m == 0


def _check(target: float, floor: float, sizes: Mapping[str, int]) -> None:
    reachable = 1.0 - floor
    if target > reachable + 1e-12:
        raise SparsityError(
            f"sparsity {target:g} cannot be reached when every layer keeps at least "
            f"{floor:g} of its weights (the floor); lower --floor below {1 - target:g}"
        )
    if not sizes:
        raise SparsityError("no weight tensor to allocate sparsity to")


def floor_cap(size: int, floor: float) -> float:
    """The most of a ``size``-weight tensor that may be pruned: a whole number of weights, so
    that the mask's rounding never takes it below ``floor`` (16 weights at a 1% floor keep 1,
    not 0: 0.98 of 16 rounds to all of them)."""
    kept = math.ceil(round(floor * size, 9))
    return (size - kept) / size


def allocate_uniform(sizes: Mapping[str, int], target: float, floor: float) -> dict[str, float]:
    """Every tensor at ``target``, or at its floor where that is less (a small tensor)."""
    _check(target, floor, sizes)
    return {name: min(float(target), floor_cap(size, floor)) for name, size in sizes.items()}


def allocate_global(weights: Mapping[str, Tensor], target: float, floor: float) -> dict[str, float]:
    """Per-tensor sparsities of one global magnitude ranking, none above ``1 - floor``.

    Water-filling: prune globally; a tensor that would go past its cap is fixed at the cap,
    and the rest of the pruning is ranked again over the tensors still free.
    """
    sizes = {name: w.numel() for name, w in weights.items()}
    _check(target, floor, sizes)
    caps = {name: floor_cap(size, floor) for name, size in sizes.items()}
    total = sum(sizes.values())
    to_prune = round(target * total)
    fixed: dict[str, float] = {}
    while True:
        free = [n for n in weights if n not in fixed]
        budget = to_prune - sum(round(fixed[n] * sizes[n]) for n in fixed)
        if not free or budget <= 0:
            return {**dict.fromkeys(free, 0.0), **fixed}
        flat = torch.cat([weights[n].detach().abs().reshape(-1).float().cpu() for n in free])
        budget = min(budget, flat.numel())
        threshold = torch.kthvalue(flat, budget).values
        shares = {}
        for n in free:
            below = int((weights[n].detach().abs().float().cpu() <= threshold).sum())
            shares[n] = min(below, sizes[n]) / sizes[n]
        over = [n for n in free if shares[n] > caps[n]]
        if not over:
            # ties at the threshold may overshoot; scale every free share to the exact count
            counted = sum(shares[n] * sizes[n] for n in free)
            scale = budget / counted if counted else 0.0
            return {**{n: min(caps[n], shares[n] * scale) for n in free}, **fixed}
        for n in over:
            fixed[n] = caps[n]


def _interpolate(curve: Mapping[float, float], level: float) -> float:
    points = sorted({0.0: 0.0, **curve}.items())
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= level <= x1:
            return y0 + (y1 - y0) * (level - x0) / (x1 - x0) if x1 > x0 else y1
    return points[-1][1]


def allocate_sensitivity(
    curves: Mapping[str, Mapping[float, float]],
    sizes: Mapping[str, int],
    target: float,
    floor: float,
    *,
    step: float = 0.005,
) -> dict[str, float]:
    """The least summed predicted drop whose pruned-weight count meets ``target``.

    ``curves[name][level]``: the metric drop (higher = worse) with that tensor alone at
    ``level``. Between measured levels the drop is interpolated linearly; no tensor goes past
    its highest measured level nor past ``1 - floor``. Greedy in steps of ``step``: each step
    raises the tensor whose next step costs the least drop per weight pruned (drops made
    non-decreasing first, so a noisy dip is not mistaken for a free lunch); the last step is
    cut short so the total is exact.
    """
    _check(target, floor, sizes)
    missing = sorted(set(sizes) - set(curves))
    if missing:
        raise SparsityError(
            f"the sensitivity file has no curve for {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            + "; measure it for this model (a new --sensitivity file)"
        )
    caps = {n: min(floor_cap(sizes[n], floor), max(curves[n], default=0.0)) for n in sizes}
    reachable = sum(caps[n] * sizes[n] for n in sizes) / sum(sizes.values())
    if target > reachable + 1e-9:
        raise SparsityError(
            f"sparsity {target:g} is beyond the levels the sensitivity file measured (at most "
            f"{reachable:.4g} overall); measure higher levels or lower --sparsity"
        )

    def monotone(name: str, level: float) -> float:
        # the largest drop at or below this level: drops only grow with sparsity
        grid = [x for x in curves[name] if x <= level]
        return max([_interpolate(curves[name], level), *(curves[name][x] for x in grid)])

    levels = dict.fromkeys(sizes, 0.0)
    need = target * sum(sizes.values())
    pruned = 0.0
    while pruned < need - 1e-9:
        best, best_cost, best_next = None, float("inf"), 0.0
        for name, size in sizes.items():
            if levels[name] >= caps[name] - 1e-12:
                continue
            nxt = min(caps[name], levels[name] + step)
            gained = (nxt - levels[name]) * size
            cost = (monotone(name, nxt) - monotone(name, levels[name])) / gained
            if cost < best_cost - 1e-15:
                best, best_cost, best_next = name, cost, nxt
        if best is None:
            break
        gained = (best_next - levels[best]) * sizes[best]
        if pruned + gained > need:
            best_next = levels[best] + (need - pruned) / sizes[best]
            gained = need - pruned
        levels[best] = best_next
        pruned += gained
    return levels
