"""Latency lookup table: how a model's latency on one device depends on each group's width.

``profile_latency`` runs on the target device (a phone board, a Jetson, a server GPU). It
times the dense model, then, for every prunable group and every kept fraction, prunes *only
that group* to that many channels (its least important ones by L1 group magnitude, as
``prunekit prune`` would), times the model again and undoes the surgery. The result is a
``LatencyTable`` that is saved as JSON and used on another machine by a budget planner::

    table = profile_latency(model, TensorSpec(((1, 3, 224, 224),)), device="cuda")
    table.save("lut.json")
    ...
    table = LatencyTable.load("lut.json")
    table.check_model(model, example, graph)          # same architecture and inputs?
    ms = table.predict({"features.1.conv.0.0": 16, "features.2.conv.0.0": 48})

Prediction model (additive)
---------------------------
``predict(kept) = base + sum_g (T_g(kept_g) - base)``, where ``T_g(k)`` is the measured latency
with group ``g`` alone cut to ``k`` channels, linearly interpolated in ``k`` between the
measured points (and held flat below the smallest one); groups not mentioned are dense and
contribute nothing. It assumes that the latency saved by cutting one group does not depend on
what happens to the others. Known limits:

* Groups that meet in one layer interact: a convolution between groups ``a`` and ``b`` costs
  about ``c * a * b`` (as fractions of its channels kept), while the additive model predicts
  ``c * (a + b - 1)``, lower by ``c * (1 - a) * (1 - b)``. Cutting neighbouring groups deeply
  therefore makes the prediction optimistic (too fast).
* Latency is not linear in channels: kernels pick tiles, vector widths and algorithms by size
  (steps at multiples of 8, 16, 32 on GPUs and NPUs); linear interpolation between a few points
  smooths those steps out. Measure more fractions (``fractions=``) where it matters.
* Every point carries timing noise, and a plan touching many groups sums that noise; fixed
  costs (launch overhead, memory-bound layers) do not shrink with channels at all.

Use the table to *rank and shortlist* plans, then confirm the chosen one with
``prunekit bench`` on the device.

Identity
--------
The table records the shared planning fingerprint (``prunekit.planning.fingerprint``): the
prunable groups' keys and sizes, every parameter and buffer's name and shape, and the example
input shapes -- not the weights, so a fine-tuned or re-initialised copy of the same
architecture matches. Group keys are ``fingerprint.group_keys``: the producing module's name,
``name#2``, ``name#3``... for later prunable groups (in graph order) that share a name. Both
are taken over the groups as traced, ignoring ``unsafe`` marks (``check_groups``), so they do
not depend on whether the graph was checked.
"""

from __future__ import annotations

import copy
import datetime
import logging
import math
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit._files import read_json
from prunekit._outputs import write_json_atomic
from prunekit._utils import describe_exception
from prunekit.criteria.magnitude import atom_scores
from prunekit.errors import InputSpecError
from prunekit.graph import ChannelGraph, trace_channels
from prunekit.inputs import ExampleInputs, InputSpec, as_example_inputs, map_tensors
from prunekit.measure.backends import backend_class
from prunekit.measure.latency import (
    DTYPES,
    TimingPolicy,
    intra_op_threads,
    measure_latency,
    resolve_device,
)
from prunekit.planning.fingerprint import (
    PlanningFileError,
    fingerprint,
    group_keys,
    structure,
    structure_differences,
)
from prunekit.planning.module_latency import ModuleLatencyModel, profile_modules
from prunekit.pruning import check_groups
from prunekit.pruning.blocks import drop_blocks, find_residual_blocks
from prunekit.pruning.select import keep_count, plan_group
from prunekit.pruning.surgery import ModelIndex, trial

log_ = logging.getLogger(__name__)

FORMAT = "prunekit-latency-table"
VERSION = 1
DEFAULT_FRACTIONS = (1.0, 0.75, 0.5, 0.25)
QUICK_FRACTIONS = (1.0, 0.5)
# Per point: at least 0.5 s of calls, until the median is known within 1% (or 5 s have passed).
DEFAULT_POLICY = TimingPolicy(
    warmup_calls=10, warmup_s=0.2, min_repeats=10, min_time_s=0.5, max_time_s=5.0,
    target_rel_ci=0.01,
)  # fmt: skip
QUICK_POLICY = TimingPolicy(
    warmup_calls=5, warmup_s=0.05, min_repeats=5, min_time_s=0.1, max_time_s=1.0,
    target_rel_ci=0.03,
)  # fmt: skip
DRIFT_WARNING = 0.05  # dense latency at the end differs from the start by more than 5%
# a prediction is never below this share of the dense time (the additive sum can go below 0)
PREDICT_FLOOR = 0.05

Log = Callable[[str], None]


class LatencyTableError(PlanningFileError):
    """A latency table that cannot be measured, read, written or used as asked."""


class TableMismatchError(LatencyTableError):
    """A latency table measured on another architecture, input shape or batch size."""


@dataclass
class GroupLatency:
    """Measured latency of the whole model with only this group cut to ``kept[i]`` channels.

    ``kept`` ascends strictly and ends with ``size`` (the dense model, ``ms[-1] == base_ms``).
    """

    name: str
    size: int
    kept: list[int]
    ms: list[float]

    def __post_init__(self) -> None:
        where = f"group {self.name!r}"
        if len(self.kept) != len(self.ms) or not self.kept:
            raise LatencyTableError(f"{where}: kept and ms must be non-empty and of equal length")
        if any(b <= a for a, b in zip(self.kept, self.kept[1:], strict=False)):
            raise LatencyTableError(f"{where}: kept counts must ascend strictly, got {self.kept}")
        if self.kept[0] < 1 or self.kept[-1] != self.size:
            raise LatencyTableError(
                f"{where}: kept counts must lie in [1, {self.size}] and end with the dense "
                f"size {self.size}, got {self.kept}"
            )
        if not all(math.isfinite(v) and v >= 0 for v in self.ms):
            raise LatencyTableError(f"{where}: latencies must be finite and >= 0, got {self.ms}")

    def at(self, kept: float) -> float:
        """Latency (ms) with this group alone at ``kept`` channels: linear interpolation between
        measured points, flat below the smallest one."""
        if not 1 <= kept <= self.size:
            raise LatencyTableError(
                f"group {self.name!r} has {self.size} channels; cannot keep {kept}"
            )
        return float(np.interp(float(kept), self.kept, self.ms))


@dataclass
class SkippedGroup:
    """A prunable group left out of the table; it can only be predicted dense."""

    size: int
    reason: str


@dataclass
class LatencyTable:
    fingerprint: str  # prunekit.planning.fingerprint of the model and example inputs
    inputs: list[list[int]]  # the example input shapes in the fingerprint (batch size 1 usually)
    batch_size: int  # the batch size latency was measured at
    device: dict[str, Any]  # name, type, backend, threads, dtype, host, torch, environment
    base_ms: float  # the dense model
    groups: dict[str, GroupLatency] = field(default_factory=dict)  # group key -> curve
    skipped: dict[str, SkippedGroup] = field(default_factory=dict)  # not measured, and why
    model: str = ""
    policy: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    created: str = ""
    blocks: dict[str, float] = field(default_factory=dict)  # residual block -> ms when dropped
    # what was measured: model name, source, weights, seed (LoadedModel.provenance)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise LatencyTableError(f"batch_size must be positive, got {self.batch_size}")
        if not (math.isfinite(self.base_ms) and self.base_ms >= 0):
            raise LatencyTableError(f"base_ms must be finite and >= 0, got {self.base_ms}")
        for key, g in self.groups.items():
            if key != g.name:
                raise LatencyTableError(f"group stored under {key!r} is named {g.name!r}")
            if not math.isclose(g.ms[-1], self.base_ms, rel_tol=1e-9, abs_tol=1e-12):
                raise LatencyTableError(
                    f"group {key!r}: the dense point ({g.size} channels) must be base_ms "
                    f"{self.base_ms}, got {g.ms[-1]}"
                )
        for name, ms in self.blocks.items():
            if not (math.isfinite(ms) and ms >= 0):
                raise LatencyTableError(f"block {name!r}: latency must be finite and >= 0")

    # ---------------------------------------------------------------- prediction

    def group(self, name: str) -> GroupLatency:
        try:
            return self.groups[name]
        except KeyError:
            known = ", ".join(list(self.groups)[:8]) + (", ..." if len(self.groups) > 8 else "")
            if name in self.skipped:
                raise LatencyTableError(
                    f"group {name!r} was not profiled ({self.skipped[name].reason}); the "
                    "latency table can only predict it dense"
                ) from None
            raise LatencyTableError(
                f"no group {name!r} in the latency table; it has {len(self.groups)} groups: {known}"
            ) from None

    def has_block(self, name: str) -> bool:
        return name in self.blocks

    def predict(self, kept: Mapping[str, float], dropped: Sequence[str] = ()) -> float:
        """Predicted latency (ms) with each named group cut to ``kept[name]`` channels and the
        residual blocks ``dropped`` without their branch; groups not mentioned stay dense.
        Additive: ``base + sum_g (T_g(kept_g) - base) + sum_b (T_b - base)`` (see the module
        docstring for what that assumes), never below ``PREDICT_FLOOR`` of the dense time. A
        group that was not profiled (``skipped``) may be named only at its full size."""
        total = self.base_ms
        for name in dropped:
            if name not in self.blocks:
                raise LatencyTableError(
                    f"block {name!r} was not profiled in this latency table (profile again "
                    "with blocks)"
                )
            total += self.blocks[name] - self.base_ms
        for name, k in kept.items():
            skipped = self.skipped.get(name)
            if name not in self.groups and skipped is not None and k == skipped.size:
                continue
            total += self.group(name).at(k) - self.base_ms
        # the sum of savings measured one group at a time can exceed the dense time on a small
        # model, where fixed per-layer costs are most of it: never predict below a floor
        return max(total, PREDICT_FLOOR * self.base_ms)

    # ---------------------------------------------------------------- identity

    def check_model(
        self,
        model: nn.Module,
        example: ExampleInputs | torch.Tensor | tuple[Any, ...] | dict[str, Any],
        graph: ChannelGraph | None = None,
        *,
        batch_size: int | None = None,
    ) -> None:
        """Raise ``TableMismatchError`` saying what differs when this table was not measured
        for ``model``'s architecture called on ``example`` (or at ``batch_size``, if given).

        ``graph`` must be traced the way ``profile_latency`` traced it (``trace_channels`` with
        its defaults; it is traced here when None).
        """
        example = as_example_inputs(example)
        graph = graph if graph is not None else trace_channels(model, example)
        tensors = ModelIndex.of(model).tensors
        differences = []
        now = structure(graph, tensors, example)
        if fingerprint(graph, tensors, example) != self.fingerprint:
            recorded = {
                **{k: v.size for k, v in self.skipped.items()},
                **{k: g.size for k, g in self.groups.items()},
            }
            differences += structure_differences(recorded, self.inputs, now, noun="table") or [
                "the parameter or buffer shapes differ (the prunable groups match)"
            ]
        if batch_size is not None and batch_size != self.batch_size:
            differences.append(f"it was measured at batch size {self.batch_size}, not {batch_size}")
        if differences:
            model_name = f" for {self.model}" if self.model else ""
            raise TableMismatchError(
                f"this latency table{model_name} does not match the model: "
                + "; ".join(differences)
                + ". Profile this model again on the target device (prunekit profile)"
            )

    # ---------------------------------------------------------------- files

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "inputs": self.inputs,
            "batch_size": self.batch_size,
            "device": self.device,
            "base_ms": self.base_ms,
            "groups": {k: asdict(g) for k, g in self.groups.items()},
            "skipped": {k: asdict(v) for k, v in self.skipped.items()},
            "policy": self.policy,
            "notes": self.notes,
            "created": self.created,
            "blocks": self.blocks,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "latency table") -> LatencyTable:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise LatencyTableError(
                f"{source} is not a prunekit latency table (format {found!r}, expected "
                f"{FORMAT!r}); make one with prunekit profile"
            )
        if data.get("version") != VERSION:
            raise LatencyTableError(
                f"{source} has version {data.get('version')!r}; this prunekit reads version "
                f"{VERSION} (profile the model again, or use the prunekit that wrote it)"
            )
        try:
            groups = {
                str(key): GroupLatency(
                    str(g["name"]),
                    int(g["size"]),
                    [int(k) for k in g["kept"]],
                    [float(v) for v in g["ms"]],
                )
                for key, g in data["groups"].items()
            }
            return cls(
                fingerprint=str(data["fingerprint"]),
                inputs=[[int(d) for d in s] for s in data["inputs"]],
                batch_size=int(data["batch_size"]),
                device=dict(data["device"]),
                base_ms=float(data["base_ms"]),
                groups=groups,
                skipped={
                    str(k): SkippedGroup(int(v["size"]), str(v["reason"]))
                    for k, v in data.get("skipped", {}).items()
                },
                model=str(data.get("model", "")),
                policy=dict(data.get("policy", {})),
                notes=[str(n) for n in data.get("notes", [])],
                created=str(data.get("created", "")),
                blocks={str(k): float(v) for k, v in data.get("blocks", {}).items()},
                provenance=dict(data.get("provenance", {})),
            )
        except LatencyTableError as exc:
            raise LatencyTableError(f"{source} is malformed: {exc}") from None
        except KeyError as exc:
            raise LatencyTableError(f"{source} is malformed: missing field {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise LatencyTableError(f"{source} is malformed: {describe_exception(exc)}") from None

    def save(self, path: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Write the table as JSON atomically (a temporary file, then ``os.replace``): an
        interrupted write never leaves a truncated file. An existing file is replaced only
        with ``force=True``."""
        path = Path(path)
        if path.is_dir():
            raise LatencyTableError(f"{path} is a directory; give a file name such as lut.json")
        if path.exists() and not force:
            raise LatencyTableError(
                f"{path} already exists; choose another file or pass --force (force=True) "
                "to replace it"
            )
        write_json_atomic(path, self.to_dict(), allow_nan=False)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        path = Path(path)
        if not path.exists():
            raise LatencyTableError(
                f"latency table {path} does not exist; make it on the target device with "
                f"prunekit profile MODEL --out {path}"
            )
        data = read_json(path, LatencyTableError, "latency table ")
        return cls.from_dict(data, f"latency table {path}")


# -------------------------------------------------------------------- measurement


class _ExampleSpec:
    """An ``InputSpec`` over fixed example inputs: batch size 1 is the example itself; a
    larger batch repeats every tensor whose first dimension is 1."""

    def __init__(self, example: ExampleInputs) -> None:
        self.example = example

    def make(self, batch_size: int = 1) -> ExampleInputs:
        if batch_size == 1:
            return self.example
        repeated = False

        def repeat(t: torch.Tensor) -> torch.Tensor:
            nonlocal repeated
            if t.dim() and t.shape[0] == 1:
                repeated = True
                return t.repeat(batch_size, *([1] * (t.dim() - 1)))
            return t

        batch = ExampleInputs(
            map_tensors(self.example.args, repeat), map_tensors(self.example.kwargs, repeat)
        )
        if not repeated:
            raise InputSpecError(
                f"cannot make a batch of {batch_size} from the example inputs "
                f"({self.example.describe()}): no tensor has a batch dimension of 1; pass an "
                "InputSpec (prunekit.inputs.TensorSpec, ...) instead"
            )
        return batch

    def describe(self) -> str:
        return self.example.describe()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "example", "inputs": self.example.describe()}


def _is_spec(value: Any) -> bool:
    return callable(getattr(value, "make", None)) and callable(getattr(value, "describe", None))


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """Kept fractions, each in (0, 1], largest first, without repeats."""
    values = [float(f) for f in fractions]
    if not values:
        raise InputSpecError("give at least one kept fraction, such as 1,0.75,0.5,0.25")
    for f in values:
        if not 0 < f <= 1:
            raise InputSpecError(
                f"kept fractions must lie in (0, 1] (1 = dense, 0.25 = a quarter of the "
                f"channels), got {f:g}"
            )
    return sorted(set(values), reverse=True)


def _working_copy(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` on ``device``: the user's model is never moved, cast or cut."""
    try:
        work = copy.deepcopy(model)
    except Exception as exc:
        raise LatencyTableError(
            f"cannot copy the model to profile it ({describe_exception(exc)}); profiling "
            "prunes a copy so that the model itself is never changed"
        ) from exc
    return work.to(device=device, dtype=dtype)


def _device_record(report: Any, backend: str, dtype: str) -> dict[str, Any]:
    env = dict(report.environment)
    is_cuda = str(report.device).startswith("cuda")
    return {
        "name": env.get("gpu") if is_cuda else env.get("cpu", "unknown"),
        "type": "cuda" if is_cuda else "cpu",
        "backend": backend,
        "threads": report.threads,
        "dtype": dtype,
        "host": platform.node(),
        "torch": torch.__version__,
        "includes_host_transfers": report.includes_host_transfers,
        # ONNX Runtime: whether its threads spun between runs (see measure.backends.ort)
        **(
            {"spinning": report.backend_info["spinning"]}
            if "spinning" in (report.backend_info or {})
            else {}
        ),
        "environment": env,
    }


def profile_latency(
    model: nn.Module,
    example: InputSpec | ExampleInputs | torch.Tensor | tuple[Any, ...] | dict[str, Any],
    graph: ChannelGraph | None = None,
    *,
    backend: str = "eager",
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    threads: int | None = None,
    dtype: str = "float32",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    policy: TimingPolicy | None = None,
    round_to: int = 1,
    method: str = "measure",
    model_name: str = "",
    blocks: bool = True,
    log: Log | None = None,
) -> LatencyTable:
    """Measure ``model``'s latency dense and with each prunable group alone cut to each of
    ``fractions`` of its channels; see the module docstring for what the table predicts.

    ``example``: an ``InputSpec`` (inputs of any batch size; the fingerprint uses batch 1) or
    example inputs for one call, normally of batch size 1 (for ``batch_size`` > 1, every tensor
    whose leading dimension is 1 is repeated). ``graph``: from ``trace_channels(model, example)``, traced here when None; groups whose
    removal breaks the forward pass are marked unsafe on it (``check_groups``) and skipped.
    Kept counts are ``keep_count(size, 1 - fraction, round_to)`` (at least 1; a multiple of
    ``round_to`` where the group is large enough -- profile with the rounding the plan will
    use: CPU and GPU kernels can be much slower for channel counts that are not multiples of
    8), de-duplicated; a group
    whose blocked channels cannot go keeps more, and the count actually kept is recorded. The
    dense point is the base measurement, taken once at the start and once at the end (their
    mean; a note records drift over 5%, e.g. thermal throttling). The channels cut are the
    least important by L1 group magnitude. Surgery is done on a copy moved to ``device``: the
    model itself is left unchanged. ``policy`` defaults to ``DEFAULT_POLICY``; ``log``
    receives one progress line per point.

    ``method="modules"`` (eager backend only) measures the dense model once, module by module,
    and models every point from that profile (``prunekit.planning.module_latency``): immune
    to the run-to-run noise of whole-model timings on a busy machine, blind to kernel effects
    of particular channel counts.

    ``blocks``: also time the model with each residual block alone dropped
    (``prunekit.pruning.blocks``), for plans that drop blocks.
    """
    say: Log = log or (lambda _: None)
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise LatencyTableError(f"round_to must be a positive integer, got {round_to!r}")
    if batch_size < 1:
        raise InputSpecError(f"batch size must be a positive integer, got {batch_size}")
    if threads is not None and threads < 1:
        raise InputSpecError(f"threads must be a positive integer, got {threads}")
    if dtype not in DTYPES:
        raise InputSpecError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    kept_fractions = check_fractions(fractions)
    if method not in ("measure", "modules"):
        raise LatencyTableError(f"method must be 'measure' or 'modules', got {method!r}")
    if method == "modules" and backend != "eager":
        raise LatencyTableError("method 'modules' times PyTorch modules: use backend 'eager'")
    backend_class(backend)  # an unknown backend fails before any work
    dev = resolve_device(device)
    policy = policy or DEFAULT_POLICY
    if _is_spec(example) and not isinstance(example, ExampleInputs):
        spec: Any = example
        traced = spec.make(1)
    else:
        traced = as_example_inputs(example)
        spec = _ExampleSpec(traced)
    spec.make(batch_size)  # fails now, not after the first measurement, if it cannot batch
    graph = graph if graph is not None else trace_channels(model, traced)
    tensors = ModelIndex.of(model).tensors
    fp = fingerprint(graph, tensors, traced)
    inputs = structure(graph, tensors, traced)["inputs"]
    keys = group_keys(graph)

    work = _working_copy(model, dev, DTYPES[dtype])
    check_groups(work, traced, graph)
    index = ModelIndex.of(work)
    reports: list[Any] = []
    unstable = 0

    def measure() -> float:
        nonlocal unstable
        report = measure_latency(
            work, spec, [batch_size], backend=backend, device=dev, threads=threads,
            dtype=dtype, policy=policy,
        )  # fmt: skip
        reports.append(report)
        result = report.results[0]
        unstable += not result.stable
        return float(result.summary.median_ms)

    say(f"profiling on {dev} with {backend}, batch size {batch_size}: dense model")
    base_start = measure()
    say(f"  dense: {base_start:.3f} ms")
    modelled: ModuleLatencyModel | None = None
    if method == "modules":
        batch = spec.make(batch_size).to(dev, DTYPES[dtype])
        repeats = max(policy.min_repeats, 5)
        with intra_op_threads(threads):
            profile = profile_modules(work, batch, repeats=repeats)
        modelled = ModuleLatencyModel(work, traced, profile)
        say(f"  {len(profile.module_ms)} modules timed ({repeats} calls); every point modelled")
    candidates = [g for g in graph.groups if g.id in keys]
    skipped = {
        keys[g.id]: SkippedGroup(
            g.size, f"removing its channels breaks the forward pass: {g.unsafe}"
        )
        for g in candidates
        if g.unsafe is not None
    }
    for key, s in skipped.items():
        say(f"  skipping {key}: {s.reason}")
    measured: dict[str, tuple[int, list[tuple[int, float]]]] = {}
    todo = [g for g in candidates if g.unsafe is None]
    magnitudes: dict[int, torch.Tensor] = {}
    for i, group in enumerate(todo, 1):
        key = keys[group.id]
        scores = atom_scores(group, index.tensors, "l1", magnitudes)
        points: list[tuple[int, float]] = []
        done = {group.size}
        try:
            for fraction in kept_fractions:
                plan = plan_group(
                    group, group.size - keep_count(group.size, 1 - fraction, round_to), scores
                )
                kept = group.size - len(plan.remove)  # blocked channels may keep more
                if kept in done:
                    continue
                done.add(kept)
                if modelled is not None:
                    ms = (
                        modelled.predict([(group, plan.remove)])
                        * base_start
                        / modelled.profile.total_ms
                    )
                else:
                    with trial(work, [(group, plan.remove)], index):
                        ms = measure()
                points.append((kept, ms))
                say(f"  [{i}/{len(todo)}] {key} ({group.size}): {kept} kept -> {ms:.3f} ms")
        except Exception as exc:  # the pruned model fails to run (or export): leave it out
            skipped[key] = SkippedGroup(
                group.size, f"measuring it pruned failed: {describe_exception(exc)}"
            )
            say(f"  skipping {key}: {skipped[key].reason}")
            log_.debug("profiling %s failed", key, exc_info=True)
            continue
        measured[key] = (group.size, points)
    failed = [s.reason for s in skipped.values() if s.reason.startswith("measuring")]
    if todo and len(failed) == len(todo):
        raise LatencyTableError(
            f"no group could be measured pruned (the first: {failed[0]}); rerun with --debug "
            "(or logging at DEBUG) for the tracebacks"
        )
    block_ms: dict[str, float] = {}
    for name in find_residual_blocks(work) if blocks else []:
        if modelled is not None:
            ms = modelled.predict([], dropped=[name]) * base_start / modelled.profile.total_ms
        else:
            with drop_blocks(work, [name], [spec.make(1).to(dev, DTYPES[dtype])]):
                ms = measure()
        block_ms[name] = ms
        say(f"  block {name} dropped -> {ms:.3f} ms")
    base_end = measure() if modelled is None else base_start
    base_ms = (base_start + base_end) / 2
    say(f"  dense again: {base_end:.3f} ms")

    notes = []
    drift = abs(base_end - base_start) / max(base_start, 1e-12)
    if drift > DRIFT_WARNING:
        notes.append(
            f"the dense model took {base_start:.4g} ms at the start and {base_end:.4g} ms at "
            f"the end ({drift:.0%} apart): the device's speed drifted (thermal throttling, "
            "frequency scaling or other load); points measured in between are less reliable"
        )
    if unstable:
        notes.append(
            f"{unstable} of {len(reports)} measurements did not reach the target precision "
            f"(median within ±{policy.target_rel_ci:.0%}) within {policy.max_time_s:g} s"
        )
    groups = {}
    for key, (size, points) in measured.items():
        ordered = sorted([*points, (size, base_ms)])
        groups[key] = GroupLatency(key, size, [k for k, _ in ordered], [v for _, v in ordered])
    return LatencyTable(
        fingerprint=fp,
        inputs=inputs,
        batch_size=batch_size,
        device=_device_record(reports[0], backend, dtype),
        base_ms=base_ms,
        groups=groups,
        skipped=skipped,
        model=model_name,
        policy=asdict(policy),
        notes=notes,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        blocks=block_ms,
    )
