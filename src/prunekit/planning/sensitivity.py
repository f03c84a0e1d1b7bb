"""Per-group sensitivity: how much worse the model gets when one group alone is pruned.

For every prunable group and every ratio of a sweep, the group's least important channels are
removed (the others stay dense), the model is evaluated, and the surgery is undone. Each point
records the *drop* (how much worse the metric got; always "higher = worse") and the fraction of
the model's MACs and parameters left. The planner (``planner.py``) allocates pruning where the
drop per MAC saved is smallest, as an expert does by hand from such curves (Li et al., "Pruning
Filters for Efficient ConvNets", ICLR 2017, introduced the per-layer sweep; AMC, He et al.
2018, showed that such non-uniform allocations beat uniform width multipliers).

Metrics (``Metric``: model -> drop):

* ``OutputDivergence`` (default, no labels needed): on a few calibration batches, the mean KL
  divergence from the dense model's softmax to the pruned model's for classifier logits
  (2-D outputs), or the relative squared error ``|y - y0|^2 / |y0|^2`` for any other output
  (embeddings, feature maps). A proxy that ranks layers much like accuracy does at a fraction
  of the cost.
* ``AccuracyDrop``: top-1 accuracy lost on a labelled loader (``prunekit.evaluate``).
* any callable ``model -> float`` of the user's (a validation loss, mAP drop...).

Results are written after every group (atomically), so an interrupted run resumes where it
stopped: groups already in the file are not measured again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit._outputs import save_figure, write_json_atomic
from prunekit._tensors import first_tensor
from prunekit._utils import meta_copy, module_device
from prunekit.criteria.magnitude import atom_scores
from prunekit.graph import ChannelGraph
from prunekit.inputs import ExampleInputs, as_example_inputs
from prunekit.measure.macs import count_macs
from prunekit.planning._files import check_header, finite, malformed, read_json, whole
from prunekit.planning.fingerprint import (
    PlanningFileError,
    check_fingerprint,
    fingerprint,
    group_keys,
    structure,
)
from prunekit.pruning.blocks import drop_blocks, find_residual_blocks, internal_modules
from prunekit.pruning.select import keep_count, plan_group
from prunekit.pruning.surgery import ModelIndex, trial

FORMAT = "prunekit-sensitivity"
VERSION = 1
DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

Metric = Callable[[nn.Module], float]
Log = Callable[[str], None]


def _first_tensor(output: Any) -> torch.Tensor:
    """The tensor a model's output is judged by (``prunekit._tensors.first_tensor``)."""
    found = first_tensor(output)
    if found is None:
        raise PlanningFileError(
            f"cannot find a tensor in the model's output ({type(output).__name__})"
        )
    return found


class OutputDivergence:
    """Drop = divergence of the model's outputs from the dense model's on calibration inputs."""

    name = "output_divergence"

    def __init__(self, model: nn.Module, batches: Sequence[ExampleInputs | torch.Tensor]) -> None:
        if not batches:
            raise PlanningFileError("output divergence needs at least one calibration batch")
        self.batches = [as_example_inputs(b) for b in batches]
        self.reference = [self._run(model, b) for b in self.batches]

    @staticmethod
    @torch.no_grad()
    def _run(model: nn.Module, batch: ExampleInputs) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            out = _first_tensor(batch.to(module_device(model)).call(model)).float()
        finally:
            model.train(was_training)
        return out

    def __call__(self, model: nn.Module) -> float:
        total = 0.0
        for batch, reference in zip(self.batches, self.reference, strict=True):
            out = self._run(model, batch)
            if out.dim() == 2:
                total += float(
                    F.kl_div(
                        F.log_softmax(out, dim=1),
                        F.log_softmax(reference, dim=1),
                        reduction="batchmean",
                        log_target=True,
                    )
                )
            else:
                total += float((out - reference).pow(2).sum() / reference.pow(2).sum().clamp(1e-12))
        return total / len(self.batches)


class AccuracyDrop:
    """Drop = top-1 accuracy lost (a fraction, 0.01 = one point) on a labelled loader."""

    name = "top1_drop"

    def __init__(self, model: nn.Module, loader: Iterable[Any], max_batches: int | None = None):
        from prunekit.evaluate import evaluate_classification

        self.loader = loader
        self.max_batches = max_batches
        self._evaluate = evaluate_classification
        self.base = self._top1(model)

    def _top1(self, model: nn.Module) -> float:
        return float(self._evaluate(model, self.loader, max_batches=self.max_batches).top1)

    def __call__(self, model: nn.Module) -> float:
        return self.base - self._top1(model)


@dataclass
class SensitivityPoint:
    ratio: float
    kept: int  # channels the group keeps
    drop: float  # how much worse the metric got (higher = worse)
    macs_fraction: float  # of the dense model's MACs, with only this group pruned
    params_fraction: float


def _group(key: str, data: Any, source: str) -> GroupSensitivity:
    """One group of a sensitivity file, each point checked (a file edited by hand: a null
    or NaN drop, a kept count outside the group)."""
    at = f"{source}: group {key}"
    size = whole(data["size"], f"{at}: size", 1)
    points = []
    for p in data["points"]:
        point = SensitivityPoint(**p)
        whole(point.kept, f"{at}: kept", 0)
        if point.kept > size:
            raise PlanningFileError(f"{at}: kept {point.kept} is more than its {size} channels")
        for name in ("ratio", "drop", "macs_fraction", "params_fraction"):
            finite(getattr(point, name), f"{at}: {name}")
        points.append(point)
    return GroupSensitivity(key, size, points)


@dataclass
class GroupSensitivity:
    key: str
    size: int
    points: list[SensitivityPoint] = field(default_factory=list)

    def curve(self, attribute: str) -> tuple[np.ndarray, np.ndarray]:
        """(kept, value) sorted by kept, with the dense point (size, 0 or 1) included."""
        dense = 0.0 if attribute == "drop" else 1.0
        points = sorted({p.kept: getattr(p, attribute) for p in self.points}.items())
        kept = np.array([k for k, _ in points] + [self.size], dtype=np.float64)
        values = np.array([v for _, v in points] + [dense], dtype=np.float64)
        return kept, values

    def at(self, kept: float, attribute: str = "drop") -> float:
        """Linear interpolation in kept channels; clamped to the measured range."""
        xs, ys = self.curve(attribute)
        return float(np.interp(kept, xs, ys))

    @property
    def min_kept(self) -> int:
        return min((p.kept for p in self.points), default=self.size)


@dataclass
class BlockSensitivity:
    """The drop when residual block ``name`` alone loses its branch (``pruning.blocks``)."""

    name: str
    drop: float
    macs_fraction: float
    params_fraction: float
    groups: list[str]  # keys of the groups inside the block: they go with it


@dataclass
class Sensitivity:
    fingerprint: str
    model: str
    metric: str
    ratios: list[float]
    base_macs: int
    base_params: int
    groups: dict[str, GroupSensitivity] = field(default_factory=dict)
    blocks: dict[str, BlockSensitivity] = field(default_factory=dict)
    inputs: list[list[int]] | None = None  # example input shapes (in the fingerprint)
    # how it was measured (model, weights, seed, data, samples...): a resumed run must match
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"format": FORMAT, "version": VERSION, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "sensitivity data") -> Sensitivity:
        check_header(data, FORMAT, VERSION, "sensitivity", source)
        with malformed(source):
            groups = {key: _group(key, g, source) for key, g in data["groups"].items()}
            blocks = {
                name: BlockSensitivity(
                    name=name,
                    drop=float(b["drop"]),
                    macs_fraction=float(b["macs_fraction"]),
                    params_fraction=float(b["params_fraction"]),
                    groups=[str(k) for k in b["groups"]],
                )
                for name, b in data.get("blocks", {}).items()
            }
            return cls(
                fingerprint=str(data["fingerprint"]),
                model=str(data.get("model", "")),
                metric=str(data["metric"]),
                ratios=[float(r) for r in data["ratios"]],
                base_macs=int(data["base_macs"]),
                base_params=int(data["base_params"]),
                groups=groups,
                blocks=blocks,
                inputs=[[int(d) for d in s] for s in data["inputs"]]
                if data.get("inputs")
                else None,
                settings=dict(data.get("settings", {})),
            )

    def save(self, path: str | Path) -> None:
        """Write atomically: an interrupted write never leaves a truncated file."""
        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Sensitivity:
        return cls.from_dict(read_json(Path(path), "sensitivity file"), str(path))

    def plot(self, path: str | Path) -> None:
        """Drop vs fraction of channels removed, one line per group, and drop vs MACs saved."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
        for key, g in self.groups.items():
            kept, drop = g.curve("drop")
            _, macs = g.curve("macs_fraction")
            left.plot(1 - kept / g.size, drop, marker=".", label=f"{key} ({g.size})")
            right.plot(100 * (1 - macs), drop, marker=".")
        left.set_xlabel("fraction of the group's channels removed")
        right.set_xlabel("% of the model's MACs removed (this group alone)")
        for ax in (left, right):
            ax.set_ylabel(f"drop ({self.metric}, higher = worse)")
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.grid(alpha=0.3)
        if len(self.groups) <= 30:
            left.legend(fontsize=6, ncol=2)
        fig.suptitle(f"sensitivity of {self.model or 'the model'} per group")
        fig.tight_layout()
        try:
            save_figure(fig, path, dpi=110)
        finally:
            plt.close(fig)


def _check_ratios(ratios: Sequence[float]) -> list[float]:
    if not ratios:
        raise PlanningFileError("the sensitivity sweep needs at least one ratio")
    for r in ratios:
        if not 0 < r < 1:
            raise PlanningFileError(f"sensitivity ratios must lie in (0, 1), got {r}")
    return sorted(set(float(r) for r in ratios))


def analyze_sensitivity(
    model: nn.Module,
    example: ExampleInputs | torch.Tensor,
    graph: ChannelGraph,
    metric: Metric,
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    scores: Mapping[int, np.ndarray] | None = None,
    round_to: int = 1,
    cache: str | Path | None = None,
    model_name: str = "",
    blocks: bool = True,
    block_batches: Sequence[ExampleInputs | torch.Tensor] | None = None,
    settings: Mapping[str, Any] | None = None,
    fresh: bool = False,
    log: Log = lambda _: None,
) -> Sensitivity:
    """Sweep every prunable group of ``model`` over ``ratios`` and measure ``metric``.

    ``scores`` (group id -> per-atom importance, ``prunekit.criteria``) choose which channels
    go; by default L1 group magnitude. ``cache``: a JSON file written after each group and
    read back on the next call, so an interrupted run resumes; a file from another model,
    metric or ratio sweep is an error, never silently mixed in. The model is left unchanged.

    ``blocks``: also measure dropping each residual block alone (``prunekit.pruning.blocks``:
    its branch replaced by the branch's mean output over ``block_batches``, by default the
    metric's calibration batches when it has them, else the example input).

    ``settings``: how this run measures (JSON data: the model's weights and seed, the data
    source, the number of samples...), recorded in the file; resuming a file recorded with
    other settings is refused, naming what differs, unless ``fresh`` (start over, replacing it).
    """
    from prunekit.planning._arguments import check_sensitivity_arguments

    check_sensitivity_arguments(
        model, example, graph, metric, ratios=ratios, scores=scores, round_to=round_to,
        cache=cache, model_name=model_name, block_batches=block_batches, settings=settings,
        log=log,
    )  # fmt: skip
    example = as_example_inputs(example)
    ratios = _check_ratios(ratios)
    index = ModelIndex.of(model)
    tensors = index.tensors
    fp = fingerprint(graph, tensors, example)
    metric_name = str(getattr(metric, "name", getattr(metric, "__name__", "custom")))
    meta_model = meta_copy(model)
    meta_index = ModelIndex.of(meta_model) if meta_model is not None else None
    meta_example = example.to("meta")

    def macs_of(target: nn.Module, inputs: ExampleInputs) -> int:
        return count_macs(target, inputs).total

    def params_of(target: nn.Module) -> int:
        return sum(p.numel() for p in target.parameters())

    base_macs = macs_of(model, example)
    base_params = params_of(model)
    path = Path(cache) if cache is not None else None
    settings = dict(settings or {})
    result: Sensitivity | None = None
    if path is not None and path.exists() and not fresh:
        result = Sensitivity.load(path)
        check_fingerprint(
            f"sensitivity file {path}", result.fingerprint, fp, result.model,
            groups={k: g.size for k, g in result.groups.items()}, inputs=result.inputs,
            now=structure(graph, tensors, example),
        )  # fmt: skip
        _check_settings(path, result.settings, settings)
        if result.metric != metric_name or not np.allclose(result.ratios, ratios):
            raise PlanningFileError(
                f"sensitivity file {path} was measured with metric {result.metric} and ratios "
                f"{result.ratios}, not {metric_name} and {ratios}; use another file or the same "
                "settings"
            )
        if result.groups:
            log(f"resuming {path}: {len(result.groups)} groups already measured")
    if result is None:
        result = Sensitivity(fp, model_name, metric_name, ratios, base_macs, base_params,
                             inputs=[list(t.shape) for t in example.tensors()],
                             settings=settings)  # fmt: skip

    keys = group_keys(graph)
    magnitude_cache: dict[int, torch.Tensor] = {}
    for group in graph.prunable:
        key = keys[group.id]
        if key in result.groups:
            continue
        group_scores = (
            scores[group.id]
            if scores is not None and group.id in scores
            else atom_scores(group, tensors, "l1", magnitude_cache)
        )
        sens = GroupSensitivity(key, group.size)
        done_kept: set[int] = set()
        for ratio in ratios:
            keep = keep_count(group.size, ratio, round_to)
            if keep >= group.size or keep in done_kept:
                continue
            plan = plan_group(group, group.size - keep, group_scores, ratio)
            if len(plan.remove) == 0:
                continue
            kept = group.size - len(plan.remove)  # blocked atoms may keep more than asked
            if kept in done_kept:
                continue
            done_kept.add(kept)
            with trial(model, [(group, plan.remove)], index):
                drop = float(metric(model))
                params = params_of(model)
                if meta_model is not None:
                    with trial(meta_model, [(group, plan.remove)], meta_index):
                        macs = macs_of(meta_model, meta_example)
                else:
                    macs = macs_of(model, example)
            if not math.isfinite(drop):
                drop = float("inf")
            sens.points.append(
                SensitivityPoint(ratio, kept, drop, macs / base_macs, params / base_params)
            )
        result.groups[key] = sens
        worst = max((p.drop for p in sens.points), default=0.0)
        log(f"{key} ({group.size} channels): {len(sens.points)} points, drop up to {worst:.4g}")
        if path is not None:
            result.save(path)
    if blocks:
        batches = block_batches or getattr(metric, "batches", None) or [example]
        _block_sensitivity(model, graph, metric, result, batches, meta_model, meta_example,
                           path, log)  # fmt: skip
    return result


def _check_settings(path: Path, recorded: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """A resumed file must have been measured the way this run measures."""
    differences = [
        f"{key} {recorded.get(key)!r} there, {now.get(key)!r} now"
        for key in sorted(set(recorded) | set(now))
        if recorded.get(key) != now.get(key)
    ]
    if differences:
        raise PlanningFileError(
            f"sensitivity file {path} was measured with other settings ({'; '.join(differences)}); "
            "rerun with the same settings to resume, choose another file, or pass --force "
            "(fresh=True) to measure again from the start"
        )


def _block_sensitivity(
    model: nn.Module,
    graph: ChannelGraph,
    metric: Metric,
    result: Sensitivity,
    batches: Sequence[Any],
    meta_model: nn.Module | None,
    meta_example: ExampleInputs,
    path: Path | None,
    log: Log,
) -> None:
    """Measure each residual block of ``model`` dropped alone, into ``result.blocks``."""
    keys = group_keys(graph)
    for name in find_residual_blocks(model):
        if name in result.blocks:
            continue
        with drop_blocks(model, [name], batches):
            drop = float(metric(model))
            params = sum(p.numel() for p in model.parameters())
            if meta_model is not None:
                with drop_blocks(meta_model, [name], [meta_example]):
                    macs = count_macs(meta_model, meta_example).total
            else:
                macs = count_macs(model, meta_example.to(module_device(model))).total
        inside = [keys[g.id] for g in graph.groups if g.id in keys
                  and internal_modules(name, g.modules)]  # fmt: skip
        result.blocks[name] = BlockSensitivity(
            name,
            drop if math.isfinite(drop) else float("inf"),
            macs / result.base_macs,
            params / result.base_params,
            inside,
        )
        log(f"block {name} dropped: drop {drop:.4g}, {1 - macs / result.base_macs:.1%} MACs saved")
        if path is not None:
            result.save(path)
