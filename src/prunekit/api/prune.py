"""``pk.prune_``: remove structure from a model in place; the config's type says how.

- ``StructuredPruning(ratio=...)``: every prunable group loses that fraction of its channels;
- ``TargetPruning(macs=0.5)``: the uniform ratio (refined per group) that keeps that share of
  the MACs, within 1%;
- ``PlanPruning(plan)``: a plan's per-group counts (from ``pk.plan`` or ``prunekit plan``);
- ``TransformerPruning(heads=, ffn=, layers=)``: attention heads, FFN neurons and whole layers
  of a Hugging Face encoder, ranked on calibration sentences (``data``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.api._config import ConfigError, VerbConfig, choice, number, positive_int
from prunekit.criteria.registry import criterion_names
from prunekit.pruning.config import StructuredPruning
from prunekit.pruning.transformer import TransformerPruning

# the criteria that need no calibration data (the others: prunekit.criteria.group_scores)
IMPORTANCE = criterion_names(needs_data=False)


@dataclass(frozen=True)
class TargetPruning(VerbConfig):
    """Keep ``macs`` of the model's MACs (a fraction in (0, 1]) by a uniform ratio, refined
    group by group until within 1%."""

    macs: float = 0.5
    round_to: int = 1
    importance: str = "l1"
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        number(self.macs, "macs", low=0, high=1, strict=True)
        positive_int(self.round_to, "round_to")
        choice(self.importance, "importance", IMPORTANCE)
        object.__setattr__(self, "ignore", tuple(self.ignore))


@dataclass(frozen=True)
class PlanPruning(VerbConfig):
    """Apply a plan: ``plan`` is a ``Plan`` or the path of a plan file. Dropped residual
    blocks are replaced by their branch's mean output over ``data``'s fit part (random inputs
    without data)."""

    plan: Any = None
    calibration_samples: int = 64

    def __post_init__(self) -> None:
        from prunekit.planning.planner import Plan

        if not isinstance(self.plan, (Plan, str, Path)):
            raise ConfigError("PlanPruning needs plan=, a Plan or the path of a plan file")
        positive_int(self.calibration_samples, "calibration_samples")

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": str(self.plan) if not hasattr(self.plan, "keep") else "<Plan object>",
            "calibration_samples": self.calibration_samples,
        }

    def load(self) -> Any:
        from prunekit.planning.planner import Plan

        return self.plan if isinstance(self.plan, Plan) else Plan.load(self.plan)


PruneConfig = StructuredPruning | TargetPruning | PlanPruning | TransformerPruning


def _record_sizes(model: nn.Module, example: Any) -> dict[str, int]:
    from prunekit.measure.macs import count_macs
    from prunekit.measure.params import count_params

    return {"macs": count_macs(model, example).total, "params": count_params(model).params}


def prune_(
    model: nn.Module,
    example: Any,
    config: PruneConfig,
    *,
    data: Any = None,
    tokenizer: Any = None,
    record: dict[str, Any] | None = None,
    log: Any = None,
) -> None:
    """Prune ``model`` in place (returns None). ``example``: inputs for one forward pass (a
    tensor, a tuple, a dict, or ``ExampleInputs``). ``data``: calibration for
    ``TransformerPruning`` (a ``Data`` of sentences, a sentences file, or a list of sentences;
    with the model's ``tokenizer``) and for a plan's dropped blocks. ``record``: a dict to fill with what was done (sizes before and
    after, groups, notes) -- the JSON every command writes."""
    from prunekit._checks import check_module
    from prunekit.graph import trace_channels
    from prunekit.inputs import as_example_inputs
    from prunekit.pruning import check_groups, prune

    check_module(model)
    say = log or (lambda _: None)
    if isinstance(config, TransformerPruning):
        _prune_transformer(model, example, config, data, tokenizer, record, say)
        return
    if not isinstance(config, (StructuredPruning, TargetPruning, PlanPruning)):
        raise ConfigError(
            "prune_ needs a StructuredPruning, TargetPruning, PlanPruning or TransformerPruning "
            f"config, got {type(config).__name__}"
        )
    example = as_example_inputs(example)
    before = _record_sizes(model, example)
    start = time.perf_counter()
    graph = trace_channels(model, example)
    trace_s = time.perf_counter() - start
    check_groups(model, example, graph)
    details: dict[str, Any] = {}
    structured: StructuredPruning | None = None
    plan: Any = None
    if isinstance(config, PlanPruning):
        plan = config.load()
        details["plan"] = {"target": plan.target, "keep": plan.keep,
                           "drop_blocks": plan.drop_blocks}  # fmt: skip
    else:
        names = sorted(n for n, _ in model.named_modules() if n)
        if isinstance(config, TargetPruning):
            from prunekit.pruning.target import search_ratio

            base = StructuredPruning(round_to=config.round_to, importance=config.importance,
                                     ignore=config.ignore)  # fmt: skip
            base.check_patterns(names)
            search = search_ratio(model, example, graph, base, config.macs)
            structured = search.config
            details["target"] = {"macs": config.macs, "probes": search.probes}
        else:
            structured = config
            structured.check_patterns(names)
    start = time.perf_counter()
    if plan is not None:
        from prunekit.planning.apply import apply_plan

        batches = None
        if plan.drop_blocks and data is not None:
            batches = calibration_inputs(data, config.calibration_samples, example)  # type: ignore[union-attr]
        result = apply_plan(model, example, plan, graph=graph, batches=batches)
    else:
        result = prune(model, example, structured, graph=graph)
    prune_s = time.perf_counter() - start
    if record is not None:
        after = _record_sizes(model, example)
        record.update(
            {
                "request": {"type": type(config).__name__, **config.to_dict()},
                # the channel-level settings that ran (a target resolves to a ratio)
                "config": structured.to_dict() if structured is not None else None,
                "before": before,
                "after": after,
                "kept": {
                    "macs": after["macs"] / before["macs"] if before["macs"] else 1.0,
                    "params": after["params"] / before["params"],
                },
                "timing_s": {"trace": trace_s, "prune": prune_s},
                "graph": graph.summary().splitlines()[0],
                **details,
                **result.to_dict(),
            }
        )


def calibration_inputs(data: Any, samples: int, example: Any) -> list[Any]:
    """Up to ``samples`` inputs of ``data``'s fit part, batched, for block means and
    sensitivity (never the eval part). A list is taken as ready-made input batches."""
    import torch

    if isinstance(data, list):
        return data

    from torch.utils.data import default_collate

    from prunekit.api.data import as_data

    resolved = as_data(data, example=example)
    # only the inputs are batched: targets may not stack (a detection set's boxes differ in count)
    loader = torch.utils.data.DataLoader(
        resolved.fit, batch_size=min(32, samples), shuffle=True,
        generator=torch.Generator().manual_seed(0),
        collate_fn=lambda items: default_collate([x for x, _ in items]))  # fmt: skip
    batches, seen = [], 0
    for x in loader:
        batches.append(x[: samples - seen])
        seen += len(batches[-1])
        if seen >= samples:
            break
    return batches


def _prune_transformer(
    model: nn.Module,
    example: Any,
    config: TransformerPruning,
    data: Any,
    tokenizer: Any,
    record: dict[str, Any] | None,
    say: Any,
) -> None:
    from prunekit.api.data import as_data
    from prunekit.errors import DataError
    from prunekit.evaluate.embedding import sentence_batches
    from prunekit.measure.params import count_params
    from prunekit.pruning.transformer import prune_transformer

    if data is None or tokenizer is None:
        raise DataError(
            "TransformerPruning needs calibration sentences (data=) and the model's tokenizer "
            "(tokenizer=, e.g. transformers.AutoTokenizer.from_pretrained(model_dir))"
        )
    sentences = data if isinstance(data, list) else as_data(data).fit
    before = count_params(model).params
    calibration = sentence_batches(tokenizer, sentences[:64], 16, 128)
    result = prune_transformer(model, example, calibration, config, log=say)
    if record is not None:
        record.update(
            {
                "config": {"type": "TransformerPruning", **config.to_dict()},
                "before": {"params": before},
                "after": {"params": count_params(model).params},
                **result.to_dict(),
            }
        )
