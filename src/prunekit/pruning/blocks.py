"""Residual blocks that can be dropped whole: the branch goes, the skip connection stays.

A residual block computes ``tail(x + branch(x))`` (MobileNetV2's inverted residual with
``tail`` empty, ResNet's basic and bottleneck blocks with ``tail = relu``). Removing its
branch keeps the block's input and output shapes, so the rest of the network runs unchanged,
and saves all of the branch's time -- including the per-layer overheads that dominate
small-batch CPU latency and that no channel count removes (Veit et al., "Residual Networks
Behave Like Ensembles of Relatively Shallow Networks", NeurIPS 2016, showed that deleting
single residual blocks of a trained ResNet costs little; block-level pruning for latency is
e.g. Lee et al., "Layer-wise / block-wise pruning", and DepthShrinker, Fu et al. 2022).

The branch is not simply deleted: it is replaced by its mean output per channel over
calibration data, ``shift`` (a trainable parameter of shape ``[1, C, 1, ...]``), so the block
becomes ``tail(x + shift)``. Where a branch's output is constant -- its last normalisation
layer's scale is zero, a dead branch -- the replacement is exact (the oracle the tests use).
The mean is taken over every dimension but dimension 1, the channel dimension of PyTorch's
``N, C, ...`` layouts.

Blocks are recognised from their code with ``torch.fx``: a module whose forward traces to
``output = tail(add(x, branch))``, where ``x`` is the module's only input, ``branch`` anything
computed from it, and ``tail`` a chain of ReLU / ReLU6 / identity modules or ``relu`` calls.
Modules that do not trace (data-dependent control flow) are not candidates; transformer
layers are dropped by ``prunekit.criteria.layer_importance.drop_layers`` instead.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from prunekit._utils import module_device
from prunekit.errors import PrunekitError
from prunekit.inputs import ExampleInputs, as_example_inputs

_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")
_TAIL_MODULES = (nn.ReLU, nn.ReLU6, nn.Identity)
_TAIL_FUNCTIONS = {torch.relu: nn.ReLU, F.relu: nn.ReLU, torch.relu_: nn.ReLU, F.relu6: nn.ReLU6}
_TAIL_METHODS = {"relu": nn.ReLU, "relu_": nn.ReLU}


class BlockError(PrunekitError):
    """A block that does not exist or cannot be dropped."""


class DroppedResidual(nn.Module):
    """A residual block without its branch: ``tail(x + shift)``."""

    def __init__(self, shift: torch.Tensor, tail: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.shift = nn.Parameter(shift.detach().clone())
        self.tail = nn.Sequential(*tail)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(x + self.shift)


def _tail_module(node: fx.Node, root: nn.Module) -> nn.Module | None:
    """The module equivalent to ``node`` when it is a ReLU-like one-input op, else None."""
    if node.op == "call_module":
        module = root.get_submodule(str(node.target))
        return module if type(module) in _TAIL_MODULES else None
    if node.op == "call_function" and node.target in _TAIL_FUNCTIONS and len(node.args) == 1:
        return _TAIL_FUNCTIONS[node.target]()
    if node.op == "call_method" and node.target in _TAIL_METHODS and len(node.args) == 1:
        return _TAIL_METHODS[str(node.target)]()
    return None


def residual_pattern(module: nn.Module) -> tuple[tuple[nn.Module, ...], fx.GraphModule] | None:
    """``(tail, graph module returning the branch)`` when ``module`` is a residual block."""
    if not any(True for _ in module.parameters()) or not list(module.children()):
        return None
    try:
        traced = fx.symbolic_trace(module)
    except Exception:  # data-dependent control flow, untraceable calls: not a candidate
        return None
    graph = traced.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    outputs = [n for n in graph.nodes if n.op == "output"]
    if len(placeholders) != 1 or len(outputs) != 1:
        return None
    x = placeholders[0]
    node = outputs[0].args[0]
    tail: list[nn.Module] = []
    while isinstance(node, fx.Node):
        is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
            node.op == "call_method" and node.target in _ADD_METHODS
        )
        if is_add:
            break
        module_ = _tail_module(node, traced)
        if module_ is None or len(node.all_input_nodes) != 1:
            return None
        tail.append(module_)
        node = node.all_input_nodes[0]
    else:
        return None
    if len(node.args) != 2 or node.kwargs or len(node.users) != 1:
        return None
    a, b = node.args
    if a is x and isinstance(b, fx.Node) and b is not x:
        branch = b
    elif b is x and isinstance(a, fx.Node) and a is not x:
        branch = a
    else:
        return None
    # the block's output must not use the branch any other way than through the add
    if any(user is not node for user in branch.users):
        return None
    outputs[0].args = (branch,)
    graph.eliminate_dead_code()
    traced.recompile()
    return tuple(reversed(tail)), traced


def find_residual_blocks(model: nn.Module) -> list[str]:
    """The names of every module of ``model`` computing ``tail(x + branch(x))``, in order."""
    return [
        name
        for name, module in model.named_modules()
        if name and not isinstance(module, DroppedResidual) and residual_pattern(module)
    ]


def _found(model: nn.Module, name: str) -> tuple[tuple[nn.Module, ...], fx.GraphModule] | None:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    return residual_pattern(module)


def is_residual_block(model: nn.Module, name: str) -> bool:
    """True when ``model`` has a module ``name`` computing ``tail(x + branch(x))``."""
    return _found(model, name) is not None


def _pattern(model: nn.Module, name: str) -> tuple[tuple[nn.Module, ...], fx.GraphModule]:
    found = _found(model, name)
    if found is None:
        candidates = find_residual_blocks(model)
        listed = ", ".join(candidates[:6]) + (", ..." if len(candidates) > 6 else "")
        raise BlockError(
            f"cannot drop {name!r}: not a residual block of this model (a module computing "
            f"x + branch(x)); the droppable ones are: {listed or 'none'}"
        )
    return found


class _Stop(Exception):
    pass


def branch_mean(
    model: nn.Module, name: str, batches: Iterable[ExampleInputs | torch.Tensor | Any]
) -> torch.Tensor:
    """The mean output of block ``name``'s branch over ``batches`` of model inputs, per
    channel (dimension 1), shaped to broadcast against the block's input."""
    module = model.get_submodule(name)
    branch = _pattern(model, name)[1]
    total: torch.Tensor | None = None
    count = 0

    def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
        nonlocal total, count
        with torch.no_grad():
            out = branch(args[0])
        dims = [0, *range(2, out.dim())] if out.dim() >= 2 else [0]
        summed = out.double().sum(dim=dims, keepdim=True)
        total = summed if total is None else total + summed
        count += out.numel() // max(1, out.shape[1] if out.dim() >= 2 else 1)
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                with contextlib.suppress(_Stop):  # the hook stops the forward at the block
                    as_example_inputs(batch).to(module_device(model)).call(model)
    finally:
        handle.remove()
        model.train(was_training)
    if total is None:
        raise BlockError(f"block {name!r} was never called on the calibration batches")
    dtype = next(module.parameters()).dtype
    return (total / count).to(dtype)


@dataclass
class DropRecord:
    """What ``drop_blocks`` replaced, to put back with ``undo`` (or on leaving a ``with``
    block, for a rehearsal: ``with drop_blocks(...): measure()``)."""

    replaced: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list)

    def undo(self) -> None:
        for parent, attr, original in reversed(self.replaced):
            setattr(parent, attr, original)
        self.replaced.clear()

    def __enter__(self) -> DropRecord:
        return self

    def __exit__(self, *_: object) -> None:
        self.undo()


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def replace_block(
    model: nn.Module, name: str, shift: torch.Tensor
) -> tuple[nn.Module, str, nn.Module]:
    """Put ``DroppedResidual(shift, tail)`` in place of residual block ``name``; returns
    (parent, attribute, the block replaced)."""
    tail = _pattern(model, name)[0]
    parent, attr = _parent(model, name)
    original = getattr(parent, attr)
    setattr(parent, attr, DroppedResidual(shift, tail))
    return parent, attr, original


def drop_blocks(
    model: nn.Module,
    names: Sequence[str],
    batches: Iterable[ExampleInputs | torch.Tensor | Any],
) -> DropRecord:
    """Replace each named residual block by ``DroppedResidual`` in place, in network order.

    ``batches``: model inputs (calibration data; at least the example input) over which each
    branch's mean output is taken, with the blocks before it already dropped. Returns a
    record whose ``undo()`` restores the original blocks (the same module objects).
    """
    batches = list(batches)
    if not names:
        return DropRecord()
    for name in names:
        _pattern(model, name)  # refuse before changing anything
    order = {name: i for i, name in enumerate(n for n, _ in model.named_modules())}
    nested = [(a, b) for a in names for b in names if a != b and b.startswith(a + ".")]
    if nested:
        raise BlockError(f"cannot drop both {nested[0][0]} and {nested[0][1]}, inside it")
    record = DropRecord()
    try:
        for name in sorted(set(names), key=lambda n: order[n]):
            shift = branch_mean(model, name, batches)
            record.replaced.append(replace_block(model, name, shift))
    except BaseException:
        record.undo()
        raise
    return record


def internal_modules(block: str, modules: Iterable[str]) -> bool:
    """True when every module named lies inside ``block`` (its channels die with it)."""
    prefix = block + "."
    names = list(modules)
    return bool(names) and all(m.startswith(prefix) for m in names)
