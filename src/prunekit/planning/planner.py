"""Choose how many channels each group keeps so that a budget is met with the least predicted
loss: the sensitivity-weighted allocation an expert makes by hand, done exactly.

Inputs: a ``Sensitivity`` (drop of the metric vs channels kept, per group, each measured with
the other groups dense), a ``Target`` (keep a fraction of the MACs or parameters, a size in
bytes, or a latency predicted by a ``LatencyTable`` measured on the target device).

Why a Lagrangian relaxation, then an exact polish:

* The predicted loss of a plan is the sum of the groups' drops (the usual additivity assumption
  of sensitivity analysis; it holds well at the small per-group drops a good plan has). The cost
  is *not* additive: a convolution's MACs are the product of its input and output channels, so
  pruning two neighbouring groups saves less than the sum of their separate savings.
* For a multiplier ``lam``, each group independently takes the option minimising
  ``drop_g(k) - lam * saving_g(k)`` (its saving measured alone). Raising ``lam`` prunes
  monotonically more, so a bisection on ``lam`` against the *exact* cost (the plan applied to
  a ``meta``-device copy and counted, or the latency table's prediction) finds the least
  pruning that meets the budget. This is the classic way to solve a separable knapsack
  (Everett 1963) and is what budgeted channel allocations in the literature reduce to; a
  greedy "cheapest drop per MAC first" walk gives the same path but needs one exact count per
  step instead of one per bisection probe.
* The Lagrangian's discrete jumps can overshoot the budget by more than the tolerance, so a
  greedy polish then gives channels back, one option step at a time, choosing each time the
  step that removes most predicted drop while the budget still holds, until the cost lies
  within 1% below the target.

Channel counts honour ``round_to`` (a multiple of N channels, for tensor cores / SIMD) and
``protect`` (module patterns whose groups stay dense).

Residual blocks measured by the sensitivity analysis (``Sensitivity.blocks``) are decisions
too: a block either stays or loses its branch (``prunekit.pruning.blocks``). For a given
multiplier, a block goes when dropping it costs less than the best channel cuts of the groups
inside it (those groups then stay dense: they go with the block). Dropping blocks is what
saves the time that channel counts cannot -- every layer's fixed cost, which dominates
small-batch CPU latency -- so a latency-aware plan uses it when the table says it pays.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit._outputs import write_json_atomic
from prunekit._utils import meta_copy
from prunekit.criteria.magnitude import atom_scores
from prunekit.errors import PrunekitError
from prunekit.graph import ChannelGraph, Group
from prunekit.inputs import ExampleInputs, as_example_inputs
from prunekit.measure.macs import count_macs
from prunekit.planning._files import check_header, finite, malformed, names, read_json, whole
from prunekit.planning.fingerprint import (
    PlanningFileError,
    check_fingerprint,
    fingerprint,
    group_keys,
    structure,
)
from prunekit.planning.sensitivity import Sensitivity
from prunekit.pruning.blocks import drop_blocks
from prunekit.pruning.config import matches
from prunekit.pruning.select import plan_group, producers
from prunekit.pruning.surgery import ModelIndex, trial

FORMAT = "prunekit-plan"
VERSION = 1
TARGET_KINDS = ("macs", "params", "bytes", "latency_ms")
TOLERANCE = 0.01
OPTIONS_PER_GROUP = 32
BLOCK = "block:"  # planner-internal keys of residual blocks: option 0 = dropped, 1 = kept

Log = Callable[[str], None]


class PlanError(PrunekitError):
    """A budget that cannot be met, or a plan that does not fit the model."""


class TargetUnreachableError(PlanError):
    """The target lies beyond what pruning every group as far as measured reaches (a
    pipeline's ladder of targets stops there; any other PlanError is a mistake to report)."""


@dataclass(frozen=True)
class Target:
    """``macs`` / ``params``: fraction of the dense model's to keep, in (0, 1]; ``bytes``:
    parameter bytes; ``latency_ms``: predicted latency from a latency table."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise PlanError(
                f"unknown target {self.kind!r}; choose one of: {', '.join(TARGET_KINDS)}"
            )
        if not math.isfinite(self.value) or self.value <= 0:
            raise PlanError(f"target {self.kind}={self.value} must be a positive number")
        if self.kind in ("macs", "params") and self.value > 1:
            raise PlanError(
                f"target {self.kind}={self.value}: give the fraction to keep, in (0, 1]"
            )

    @classmethod
    def parse(cls, text: str) -> Target:
        """``macs=0.6``, ``params=0.5``, ``bytes=4MB``, ``latency_ms=12.5``."""
        kind, sep, value = text.partition("=")
        kind = kind.strip()
        if not sep or not value.strip():
            raise PlanError(
                f"target {text!r}: expected KIND=VALUE with KIND one of {', '.join(TARGET_KINDS)}"
            )
        if kind == "bytes":
            from prunekit._units import parse_bytes

            try:
                return cls(kind, float(parse_bytes(value)))
            except PrunekitError as exc:
                raise PlanError(f"target {text!r}: {exc}") from None
        try:
            number = float(value)
        except ValueError:
            raise PlanError(f"target {text!r}: {value.strip()!r} is not a number") from None
        return cls(kind, number)

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"

    def tolerance(self) -> float:
        """Absolute slack below the target: 1% of the dense model for fractions, else 1%."""
        return TOLERANCE if self.kind in ("macs", "params") else TOLERANCE * self.value


@dataclass
class Plan:
    fingerprint: str
    model: str
    target: str
    keep: dict[str, int]  # group key -> channels kept
    sizes: dict[str, int]  # group key -> channels in the dense model
    predicted_drop: float
    achieved: dict[str, float]  # macs_fraction, params_fraction, bytes, latency_ms (if known)
    metric: str
    importance: str = "l1"  # the criterion choosing which channels go (as when planned)
    notes: list[str] = field(default_factory=list)
    drop_blocks: list[str] = field(default_factory=list)  # residual blocks losing their branch
    inputs: list[list[int]] | None = None  # example input shapes (in the fingerprint)
    # what it was planned from: model, weights, seed, sensitivity and latency files
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "plan") -> Plan:
        check_header(data, FORMAT, VERSION, "plan", source)
        with malformed(source):
            return cls(
                fingerprint=str(data["fingerprint"]),
                model=str(data.get("model", "")),
                target=str(data["target"]),
                keep={str(k): whole(v, f"{source}: keep[{k}]", 1) for k, v in data["keep"].items()},
                sizes={
                    str(k): whole(v, f"{source}: sizes[{k}]", 1) for k, v in data["sizes"].items()
                },
                predicted_drop=finite(data["predicted_drop"], f"{source}: predicted_drop"),
                achieved={str(k): float(v) for k, v in data["achieved"].items()},
                metric=str(data.get("metric", "")),
                importance=str(data.get("importance", "l1")),
                notes=[str(n) for n in data.get("notes", [])],
                drop_blocks=names(data.get("drop_blocks", []), f"{source}: drop_blocks"),
                inputs=[[int(d) for d in s] for s in data["inputs"]]
                if data.get("inputs")
                else None,
                provenance=dict(data.get("provenance", {})),
            )

    def save(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(read_json(Path(path), "plan file"), str(path))

    def table(self) -> str:
        lines = [f"{'group':<40} {'kept':>11} {'removed':>8}"]
        for key, size in self.sizes.items():
            keep = self.keep.get(key, size)
            lines.append(f"{key:<40} {keep:>5}/{size:<5} {1 - keep / size:>8.0%}")
        lines += [
            f"{name:<40} {'dropped (residual branch removed)':>20}" for name in self.drop_blocks
        ]
        return "\n".join(lines)


class _Costs:
    """The cost of a plan, fast and exact.

    ``estimate`` needs no forward pass: a plan's parameter count and bytes follow exactly from
    the kept shape of every tensor, and a module's MACs scale with the kept fraction of each
    dimension of its weight (a convolution's or linear layer's MACs are its weight's numel
    times the output positions, which channel pruning leaves alone). MACs that no weight
    explains (a functional matmul, attention scores) are left at their dense value, so the
    estimate can be off for transformers; ``exact`` counts the pruned ``meta`` copy, and the
    planner corrects the estimate with it (``correction``) until the two agree.
    """

    def __init__(
        self,
        model: nn.Module,
        example: ExampleInputs,
        groups: Mapping[str, Group],
        scores: Mapping[str, np.ndarray],
        lut: Any | None,
    ) -> None:
        meta = meta_copy(model)
        if meta is None:
            raise PlanError("the model cannot be copied to the meta device to count its cost")
        self.meta = meta
        self.index = ModelIndex.of(meta)
        self.example = example.to("meta")
        self.groups = groups
        self.scores = scores
        self.lut = lut
        self.shapes = {name: tuple(t.shape) for name, t in self.index.tensors.items()}
        self.element_bytes = {n: t.element_size() for n, t in self.index.tensors.items()}
        self.parameters = {n for n, t in self.index.tensors.items() if isinstance(t, nn.Parameter)}
        dense = count_macs(self.meta, self.example)
        # module -> (dense MACs, its weight's name) for the MACs that scale with a weight
        self.module_macs: list[tuple[int, str | None, str]] = []
        for module, macs in dense.by_module.items():
            weight = f"{module}.weight" if module else "weight"
            self.module_macs.append((macs, weight if weight in self.shapes else None, module + "."))
        self.removals: dict[tuple[str, int], list[tuple[Group, np.ndarray]]] = {}
        self.removed: dict[tuple[str, int], dict[tuple[str, int], int]] = {}
        self.correction = 1.0
        self.exact_cache: dict[tuple[tuple[str, int], ...], dict[str, float]] = {}
        self.base = self.exact({})

    def _removal(self, key: str, kept: int) -> dict[tuple[str, int], int]:
        """(tensor, dim) -> indices removed when group ``key`` keeps ``kept`` channels."""
        if (key, kept) not in self.removed:
            group = self.groups[key]
            atoms = plan_group(group, group.size - kept, self.scores[key]).remove
            self.removals[(key, kept)] = [(group, atoms)]
            counts: dict[tuple[str, int], int] = {}
            for member, idx in group.slices(atoms) if len(atoms) else []:
                counts[(member.owner, member.dim)] = counts.get(
                    (member.owner, member.dim), 0
                ) + len(idx)
            self.removed[(key, kept)] = counts
        return self.removed[(key, kept)]

    def _active(self, keep: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
        return tuple(
            sorted(
                (k, v)
                for k, v in keep.items()
                if (v == 0 if k.startswith(BLOCK) else v < self.groups[k].size)
            )
        )

    @staticmethod
    def _split(active: tuple[tuple[str, int], ...]) -> tuple[dict[str, int], list[str]]:
        """(group -> kept, dropped block names) of an active plan."""
        groups = {k: v for k, v in active if not k.startswith(BLOCK)}
        return groups, [k[len(BLOCK) :] for k, _ in active if k.startswith(BLOCK)]

    def _latency(self, groups: Mapping[str, int], dropped: Sequence[str]) -> float:
        assert self.lut is not None
        return float(self.lut.predict(dict(groups), dropped=dropped))

    def estimate(self, keep: Mapping[str, int]) -> dict[str, float]:
        removed: dict[tuple[str, int], int] = {}
        groups, dropped = self._split(self._active(keep))
        prefixes = tuple(f"{name}." for name in dropped)
        for key, kept in groups.items():
            for where, n in self._removal(key, kept).items():
                removed[where] = removed.get(where, 0) + n

        def kept_fraction(name: str) -> float:
            if name.startswith(prefixes):
                return 0.0
            shape = self.shapes[name]
            fraction = 1.0
            for dim, size in enumerate(shape):
                if size:
                    fraction *= (size - removed.get((name, dim), 0)) / size
            return fraction

        params = size = 0.0
        for name in self.parameters:
            numel = float(np.prod(self.shapes[name])) * kept_fraction(name)
            params += numel
            size += numel * self.element_bytes[name]
        macs = sum(
            m * (kept_fraction(w) if w else 0.0 if name.startswith(prefixes) else 1.0)
            for m, w, name in self.module_macs
        )
        result = {"macs": macs * self.correction, "params": params, "bytes": size}
        if self.lut is not None:
            result["latency_ms"] = self._latency(groups, dropped)
        return result

    def exact(self, keep: Mapping[str, int]) -> dict[str, float]:
        active = self._active(keep)
        if active not in self.exact_cache:
            groups, dropped = self._split(active)
            removals = []
            for key, kept in groups.items():
                self._removal(key, kept)
                removals += self.removals[(key, kept)]
            with (
                trial(self.meta, removals, self.index),
                drop_blocks(self.meta, dropped, [self.example]),
            ):
                macs = float(count_macs(self.meta, self.example).total)
                params = float(sum(p.numel() for p in self.meta.parameters()))
                size = float(sum(p.numel() * p.element_size() for p in self.meta.parameters()))
            result = {"macs": macs, "params": params, "bytes": size}
            if self.lut is not None:
                result["latency_ms"] = self._latency(groups, dropped)
            self.exact_cache[active] = result
        return self.exact_cache[active]

    def value(self, keep: Mapping[str, int], kind: str, exact: bool = False) -> float:
        """In the target's unit: kept fraction for macs/params, bytes, milliseconds."""
        if kind == "latency_ms" and not exact:  # the table alone: no need to count the rest
            return self._latency(*self._split(self._active(keep)))
        cost = self.exact(keep) if exact else self.estimate(keep)
        if kind in ("macs", "params"):
            return cost[kind] / self.base[kind]
        return cost[kind]

    def calibrate(self, keep: Mapping[str, int]) -> None:
        """Make the MACs estimate agree with the exact count at ``keep``."""
        estimated = self.estimate(keep)["macs"] / self.correction
        if estimated > 0:
            self.correction = self.exact(keep)["macs"] / estimated


def _options(size: int, min_kept: int, round_to: int, measured: Sequence[int]) -> list[int]:
    """Channel counts a group may keep, ascending: the measured points plus an even grid
    between the smallest measured count and the dense size, all multiples of ``round_to``
    (where the group is large enough) and the dense size itself."""
    step = max(1, math.ceil((size - min_kept) / OPTIONS_PER_GROUP))
    candidates = set(range(min_kept, size, step)) | set(measured) | {size}
    if round_to > 1 and size >= round_to:
        candidates = {
            min(size, max(round_to, math.ceil(k / round_to) * round_to)) for k in candidates
        }
    return sorted(k for k in candidates if min_kept <= k <= size or k == size)


def make_plan(
    model: nn.Module,
    example: ExampleInputs | torch.Tensor,
    graph: ChannelGraph,
    sensitivity: Sensitivity,
    target: Target,
    *,
    lut: Any | None = None,
    scores: Mapping[int, np.ndarray] | None = None,
    round_to: int = 1,
    protect: Sequence[str] = (),
    importance: str = "l1",
    latency_weight: float = 0.0,
    blocks: bool = True,
    log: Log = lambda _: None,
    reuse: dict[str, Any] | None = None,
) -> Plan:
    """Per-group channel counts meeting ``target`` with the least predicted drop.

    ``scores`` (group id -> per-atom importance, from ``prunekit.criteria``; named by
    ``importance`` in the plan) choose which channels go, by default L1 group magnitude.
    ``lut``: a ``prunekit.planning.lut.LatencyTable`` (required for ``latency_ms``). The
    sensitivity and the table must come from this model (fingerprints); ``protect``: module
    names or ``re:`` patterns whose groups are not pruned. The cost of the returned plan is
    exact (counted on the pruned structure) and lies within 1% below the target.

    ``latency_weight`` (needs ``lut``) makes a MACs / params / bytes plan latency-aware: each
    group's predicted drop is charged ``latency_weight`` times the relative latency its width
    keeps (``(lut(k) - lut(dense)) / lut(dense)``, negative where it saves time), so that among
    equally cheap cuts the planner takes those that make the model faster on the device the
    table was measured on -- at equal MACs, some layers' channels cost far more time than
    others (memory-bound depthwise convolutions, per-layer overheads at batch 1).

    ``blocks``: let the plan drop the residual blocks the sensitivity file measured
    (``Plan.drop_blocks``; with a latency table, only those the table measured too).

    ``reuse``: a dict the caller keeps between calls that plan the same model, example,
    table and scores for several targets (a pipeline stage's ladder): the dense costs are
    counted once and the exact counts of plans already seen are kept.
    """
    from prunekit.planning._arguments import check_plan_arguments

    check_plan_arguments(
        model, example, graph, sensitivity, target, lut=lut, scores=scores, round_to=round_to,
        protect=protect, importance=importance, latency_weight=latency_weight, log=log,
    )  # fmt: skip
    example = as_example_inputs(example)
    if round_to < 1:
        raise PlanError(f"round_to must be a positive integer, got {round_to}")
    index = ModelIndex.of(model)
    fp = fingerprint(graph, index.tensors, example)
    now = structure(graph, index.tensors, example)
    check_fingerprint(
        "the sensitivity file", sensitivity.fingerprint, fp, sensitivity.model,
        groups={k: g.size for k, g in sensitivity.groups.items()}, inputs=sensitivity.inputs,
        now=now,
    )  # fmt: skip
    if latency_weight < 0 or (latency_weight > 0 and lut is None):
        raise PlanError("latency_weight must be >= 0 and needs a latency table (lut)")
    if target.kind == "latency_ms" and lut is None:
        raise PlanError("a latency_ms target needs a latency table (prunekit profile --out)")
    if lut is not None:
        lut.check_model(model, example, graph)

    keys = group_keys(graph)
    groups = {keys[g.id]: g for g in graph.prunable}
    missing = [k for k in groups if k not in sensitivity.groups]
    if missing:
        raise PlanningFileError(
            f"the sensitivity file lacks {len(missing)} groups of this model ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); finish the sensitivity run first"
        )
    # a group is protected when a module producing its channels matches (as for ratios)
    protected = {
        k
        for k, g in groups.items()
        if any(matches(p, m) for p in protect for m in producers(g, index.tensors))
    }
    magnitude_cache: dict[int, torch.Tensor] = {}
    key_scores = {
        k: (
            scores[g.id]
            if scores is not None and g.id in scores
            else atom_scores(g, index.tensors, "l1", magnitude_cache)
        )
        for k, g in groups.items()
    }
    if reuse is not None and reuse.get("for") == (id(model), id(lut), id(scores), importance):
        costs = reuse["costs"]
        costs.correction = 1.0  # calibrated per plan (MACs targets)
    else:
        costs = _Costs(model, example, groups, key_scores, lut)
        if reuse is not None:
            reuse.update({"for": (id(model), id(lut), id(scores), importance), "costs": costs})
    kind = target.kind
    goal = target.value
    slack = target.tolerance()

    options: dict[str, list[int]] = {}
    for key, group in groups.items():
        sens = sensitivity.groups[key]
        if key in protected or not sens.points:
            continue
        measured = [p.kept for p in sens.points if math.isfinite(p.drop)]
        if not measured:
            continue
        options[key] = _options(group.size, min(measured), round_to, measured)

    # residual blocks: option 0 drops the block, 1 keeps it; the groups inside go with it
    inside: dict[str, list[str]] = {}
    small = sorted(k for k in options if groups[k].size < round_to)
    notes = (
        [f"round_to={round_to} is more than the channels of {len(small)} groups "
         f"({', '.join(small[:5])}{', ...' if len(small) > 5 else ''}): their counts are not "
         "rounded"]
        if round_to > 1 and small
        else []
    )  # fmt: skip
    for name, block in sensitivity.blocks.items() if blocks else ():
        if not math.isfinite(block.drop) or any(k in protected for k in block.groups):
            continue
        if any(name.startswith(other + ".") for other in sensitivity.blocks):
            continue  # a block inside another: only the outer one is a decision
        if any(matches(p, name) for p in protect):
            continue
        if lut is not None and not lut.has_block(name):
            notes.append(f"block {name} was not profiled in the latency table: kept")
            continue
        options[BLOCK + name] = [0, 1]
        inside[BLOCK + name] = [k for k in block.groups if k in options]

    def drop(key: str, kept: int) -> float:
        if key.startswith(BLOCK):
            return sensitivity.blocks[key[len(BLOCK) :]].drop if kept == 0 else 0.0
        return sensitivity.groups[key].at(kept, "drop")

    def predicted_ms(key: str, kept: int) -> float:
        if key.startswith(BLOCK):
            dropped = [key[len(BLOCK) :]] if kept == 0 else []
            return float(lut.predict({}, dropped=dropped))  # type: ignore[union-attr]
        return float(lut.predict({key: kept}))  # type: ignore[union-attr]

    base_ms = float(lut.predict({})) if lut is not None else 0.0

    def objective(key: str, kept: int) -> float:
        """What the allocation minimises: the predicted drop, plus the latency charge."""
        if latency_weight == 0:
            return drop(key, kept)
        return drop(key, kept) + latency_weight * (predicted_ms(key, kept) - base_ms) / base_ms

    dense_cost = costs.value({}, kind)

    def saving(key: str, kept: int) -> float:
        """This group's saving alone, in the target's unit (an estimate for the relaxation)."""
        if kind == "latency_ms":
            return dense_cost - predicted_ms(key, kept)
        attribute = "params_fraction" if kind in ("params", "bytes") else "macs_fraction"
        if key.startswith(BLOCK):
            block = sensitivity.blocks[key[len(BLOCK) :]]
            fraction = 1 - getattr(block, attribute) if kept == 0 else 0.0
        else:
            fraction = 1 - sensitivity.groups[key].at(kept, attribute)
        return fraction if kind != "bytes" else fraction * costs.base["bytes"]

    tables = {
        key: (
            np.array([objective(key, k) for k in opts]),
            np.array([saving(key, k) for k in opts]),
        )
        for key, opts in options.items()
    }

    def allocation(lam: float) -> dict[str, int]:
        keep = {}
        value = {}
        for key, opts in options.items():
            d, s = tables[key]
            # ties go to the option keeping more channels (options ascend in channels)
            best = len(opts) - 1 - int(np.argmin((d - lam * s)[::-1]))
            keep[key] = opts[best]
            value[key] = float(d[best] - lam * s[best])
        for key, groups_inside in inside.items():
            # a block goes only when that beats the best cuts of the groups inside it
            d, s = tables[key]
            kept_value = float(d[1] - lam * s[1]) + sum(value[g] for g in groups_inside)
            if float(d[0] - lam * s[0]) < kept_value:
                keep[key] = 0
                for g in groups_inside:
                    keep[g] = options[g][-1]
            else:
                keep[key] = 1
        return keep

    def meets(keep: Mapping[str, int]) -> bool:
        return costs.value(keep, kind) <= goal + 1e-12

    def search() -> dict[str, int]:
        most = {key: opts[0] for key, opts in options.items()}
        if not options or not meets(most):
            floor = costs.value(most, kind, exact=True) if options else dense_value
            raise TargetUnreachableError(
                f"the target {target} cannot be met: pruning every group as far as the "
                f"sensitivity sweep went still gives {floor:.4g}; sweep higher ratios, "
                "protect fewer layers or relax the target"
            )
        # lam in the data's units: drops per unit saving
        scale = max(
            (float(np.max(d)) / max(float(np.max(s)), 1e-12) for d, s in tables.values()),
            default=1.0,
        )
        lo, hi = 0.0, max(scale, 1e-9)
        while not meets(allocation(hi)) and hi < scale * 1e12:
            hi *= 4
        for _ in range(60):
            mid = (lo + hi) / 2
            if meets(allocation(mid)):
                hi = mid
            else:
                lo = mid
            if hi - lo <= 1e-9 * hi:
                break
        keep = allocation(hi)
        if not meets(keep):
            keep = most
        return without_inside(_polish(keep, options, objective, costs, kind, goal, slack))

    def without_inside(keep: dict[str, int]) -> dict[str, int]:
        """The groups inside a dropped block stay dense: they go with it."""
        for key, groups_inside in inside.items():
            if keep.get(key) == 0:
                keep.update({g: options[g][-1] for g in groups_inside})
        return keep

    dense_value = costs.value({}, kind, exact=True)
    keep: dict[str, int] = {}
    if dense_value <= goal:
        log(f"the dense model already meets {target} ({dense_value:.4g})")
    else:
        # the MACs estimate is exact for convolutions and linear layers; where it is not
        # (attention), correct it with the exact count of the plan found and search again
        for _ in range(4):
            keep = search()
            if goal - slack <= costs.value(keep, kind, exact=True) <= goal + 1e-12:
                break
            costs.calibrate(keep)
    value = costs.value(keep, kind, exact=True)
    cost = costs.exact(keep)
    achieved = {
        "macs_fraction": cost["macs"] / costs.base["macs"],
        "params_fraction": cost["params"] / costs.base["params"],
        "bytes": cost["bytes"],
        "macs": cost["macs"],
    }
    if "latency_ms" in cost:
        achieved["latency_ms"] = cost["latency_ms"]
        achieved["dense_latency_ms"] = costs.base["latency_ms"]
    if value < goal - slack:
        notes.append(
            f"the cost {value:.4g} lies more than 1% below the target {goal:.4g}: the groups' "
            "channel counts are too coarse (or round_to too large) to land closer"
        )
    if protected:
        notes.append(f"protected (kept dense): {', '.join(sorted(protected))}")
    full_keep = {key: keep.get(key, g.size) for key, g in groups.items()}
    dropped = [k[len(BLOCK) :] for k, v in keep.items() if k.startswith(BLOCK) and v == 0]
    predicted = sum(drop(k, v) for k, v in full_keep.items() if v < groups[k].size)
    predicted += sum(sensitivity.blocks[name].drop for name in dropped)
    if dropped:
        log(f"residual blocks dropped: {', '.join(dropped)}")
    log(f"plan for {target}: {value:.4g}, predicted drop {predicted:.4g}")
    return Plan(
        fingerprint=fp,
        model=sensitivity.model,
        target=str(target),
        keep=full_keep,
        sizes={k: g.size for k, g in groups.items()},
        predicted_drop=predicted,
        achieved=achieved,
        metric=sensitivity.metric,
        importance=importance if scores is not None else "l1",
        notes=notes,
        drop_blocks=dropped,
        inputs=now["inputs"],
    )


def _polish(
    keep: dict[str, int],
    options: Mapping[str, list[int]],
    drop: Callable[[str, int], float],
    costs: _Costs,
    kind: str,
    goal: float,
    slack: float,
) -> dict[str, int]:
    """Move the cost up to within ``slack`` below the target, for the least predicted drop.

    Each round takes the best move that keeps the budget: first giving one group one option
    step back (less drop); when every such step overshoots -- a coarse group, a channel of
    which is worth more than the slack -- a trade: one step back in one group, and as few
    steps further in another as bring the cost back under the target, if that lands closer.
    """
    keep = dict(keep)

    def position(key: str) -> int:
        opts = options[key]
        return opts.index(keep[key]) if keep[key] in opts else len(opts) - 1

    # every round moves one option step; a walk from the most to the least pruned plan
    # takes at most this many
    for _ in range(sum(len(opts) for opts in options.values()) + 10):
        value = costs.value(keep, kind)
        if value >= goal - slack:
            break
        best: tuple[float, dict[str, int]] | None = None
        ups = {k: options[k][position(k) + 1] for k in options if position(k) + 1 < len(options[k])}
        for key, step in ups.items():
            trial = {**keep, key: step}
            gain = drop(key, keep[key]) - drop(key, step)
            if costs.value(trial, kind) <= goal and (best is None or gain > best[0]):
                best = (gain, trial)
        if best is None:
            for (up, up_step), down in itertools.product(ups.items(), options):
                if up == down:
                    continue
                # as few steps further in ``down`` as bring the trade within the budget
                for down_position in range(position(down) - 1, -1, -1):
                    down_step = options[down][down_position]
                    trial = {**keep, up: up_step, down: down_step}
                    new_value = costs.value(trial, kind)
                    if new_value <= goal:
                        break
                else:
                    continue
                if new_value <= value:
                    continue
                gain = (drop(up, keep[up]) - drop(up, up_step)) + (
                    drop(down, keep[down]) - drop(down, down_step)
                )
                if best is None or gain > best[0]:
                    best = (gain, trial)
        if best is None:
            break
        keep = best[1]
    return keep
