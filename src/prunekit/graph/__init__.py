"""Coupled channel groups: what must be cut together, derived by running the model once.

``trace_channels(model, inputs)`` returns a ``ChannelGraph``: the groups of channels that
can be pruned, each made of atoms (slices of parameters removed together), and everything
that could not be pruned with the reason (the operation and module that prevented it).

The model is traced on a ``meta``-device copy (no computation, no memory, and the user's
model is never touched), in eval mode and, when that works too, in train mode, so that
branches that only run in training (auxiliary classifiers) are coupled as well. Models whose
control flow depends on values (detection post-processing) are traced for real in eval mode.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit._checks import check_module
from prunekit._utils import describe_exception, swapped_to_meta, without_gc
from prunekit.errors import ModelForwardError
from prunekit.graph._context import RuleContext, UniformRequirement
from prunekit.graph._groups import Group, Member, build_groups
from prunekit.graph._labels import LabelSpace
from prunekit.graph._registry import register_function_rule, register_module_rule
from prunekit.graph._trace import run_traced

# Rules register themselves on import.
from prunekit.graph.rules import attention, contract, elementwise, indexing, normalize, shape  # noqa: F401
from prunekit.inputs import ExampleInputs, as_example_inputs, doubled

log = logging.getLogger(__name__)

__all__ = [
    "ChannelGraph",
    "Group",
    "Member",
    "register_function_rule",
    "register_module_rule",
    "trace_channels",
]


@dataclass
class ChannelGraph:
    groups: list[Group]
    unsupported: Counter[str] = field(default_factory=Counter)
    rule_errors: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: bool = False  # groups were rehearsed for hard-coded sizes (see prunekit.pruning)
    on_meta: bool = True  # traced, and can be rehearsed, on the meta device
    # a meta-device copy for rehearsals, made on first need (see prunekit.pruning)
    meta_model: nn.Module | None = field(default=None, repr=False)
    meta_index: Any = field(default=None, repr=False)  # its prunekit.pruning.surgery.ModelIndex

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def group_of(self, module_name: str) -> list[Group]:
        return [g for g in self.groups if module_name in g.modules]

    def summary(self) -> str:
        prunable = self.prunable
        exact = sum(g.exact for g in prunable)
        stuck = [g for g in self.groups if g.size > 1 and not g.prunable]
        lines = [
            f"{len(prunable)} prunable groups ({exact} exact, {len(prunable) - exact} mixing), "
            f"{len(stuck)} not prunable; traced in {' and '.join(self.modes)} mode"
        ]
        for reason, count in self.unsupported.most_common(10):
            lines.append(f"  unsupported: {reason} (x{count})")
        lines += [f"  rule error: {e}" for e in self.rule_errors[:10]]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _tensor_names(model: nn.Module) -> dict[int, tuple[str, bool]]:
    """id -> (qualified name, is_buffer) of every parameter and floating-point buffer."""
    names: dict[int, tuple[str, bool]] = {}
    for prefix, module in model.named_modules():
        for attr, p in module._parameters.items():
            if p is not None:
                names.setdefault(id(p), (f"{prefix}.{attr}" if prefix else attr, False))
        for attr, b in module._buffers.items():
            if b is not None and b.is_floating_point():
                names.setdefault(id(b), (f"{prefix}.{attr}" if prefix else attr, True))
    return names


@dataclass
class _Run:
    space: LabelSpace
    params: dict[str, Any]
    uniform: list[UniformRequirement] = field(default_factory=list)
    unsupported: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    executed: set[str] = field(default_factory=set)

    def trace(self, model: nn.Module, example: ExampleInputs, train: bool) -> None:
        ctx = RuleContext(self.space, _tensor_names(model), _param_labels=self.params)
        was_training = model.training
        model.train(train)
        try:
            tracer = run_traced(model, ctx, example.args, example.kwargs)
        finally:
            model.train(was_training)
        self.uniform += ctx.uniform
        self.unsupported.update(tracer.unsupported)
        self.errors += tracer.rule_errors
        self.executed |= tracer.executed


def _trace_on_meta(run: _Run, model: nn.Module, example: ExampleInputs, train: bool) -> None:
    with swapped_to_meta(model):
        run.trace(model, example.to("meta"), train=train)


@without_gc
def trace_channels(
    model: nn.Module,
    inputs: ExampleInputs | torch.Tensor | tuple[Any, ...] | dict[str, Any],
    *,
    train_mode: bool = True,
) -> ChannelGraph:
    """Derive the coupled channel groups of ``model`` called on ``inputs``.

    ``model`` is left unchanged. ``train_mode=False`` skips the extra training-mode trace.
    Raises ``ModelForwardError`` if the model cannot run on ``inputs`` at all.
    """
    check_module(model)
    example = as_example_inputs(inputs)
    run = _Run(LabelSpace(), {})
    modes, notes = [], []
    try:
        _trace_on_meta(run, model, example, train=False)
        modes.append("eval")
    except Exception as exc:
        log.debug("meta trace failed: %s", exc)
        run = _Run(LabelSpace(), {})
        notes.append("traced with a real forward pass (the model does not run on the meta device)")
        try:
            run.trace(model, example, train=False)
        except Exception as exc:
            raise ModelForwardError(
                f"the forward pass failed on inputs {example.describe()}: {describe_exception(exc)}"
            ) from exc
        modes.append("eval")
    on_meta = not notes
    idle = [  # modules none of whose parameters the eval trace touched
        n for n, m in model.named_modules()
        if (own := [k for k, v in m._parameters.items() if v is not None])
        and not any((f"{n}.{k}" if n else k) in run.params for k in own)
    ]  # fmt: skip
    if train_mode and on_meta and idle:
        # modules that only run in training (auxiliary heads) must be coupled too
        snapshot = _Run(run.space, run.params)
        try:
            _trace_on_meta(snapshot, model, doubled(example), train=True)
            run.uniform += snapshot.uniform
            run.unsupported.update(snapshot.unsupported)
            run.errors += snapshot.errors
            modes.append("train")
        except Exception as exc:
            notes.append(f"train-mode trace skipped ({describe_exception(exc)})")
    groups = build_groups(run.space, run.uniform)
    return ChannelGraph(groups, run.unsupported, run.errors, modes, notes, on_meta=on_meta)
