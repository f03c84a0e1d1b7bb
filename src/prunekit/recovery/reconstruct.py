"""Refit the Linear layers that read pruned channels, so each reproduces the dense layer's output.

Removing attention heads or FFN neurons deletes input columns of the next Linear (the
attention output projection, the FFN's down projection). What the removed channels
contributed is lost, but part of it is predictable from the channels that remain: a removed
head often attends much like a kept one. So, for each such Linear in network order, solve a
ridge-regularised least-squares problem on calibration data:

    W', b' = argmin || X_student @ W'^T + b' - Y_teacher ||^2 + sum_i ridge * E_i * ||W'[:, i]||^2

where ``X_student`` are the inputs the *pruned* model gives this Linear (earlier layers
already refitted, so their remaining error is corrected too), ``Y_teacher`` the dense
layer's outputs on the same data and ``E_i`` the energy of input ``i``. This is the
layer-wise reconstruction of Kwon et al., "A Fast Post-Training Pruning Framework for
Transformers" (NeurIPS 2022), with a full matrix instead of one scale per head, plus the bias
compensation of FLAP (An et al., AAAI 2024) through ``b'``. It needs no labels and gives
distillation a better start. Matching one layer is not matching the model: the Linear's
output joins a residual stream that pruning changed as well, so a refit stays only if the
model's output gets closer to the dense one (on MiniLM it undid the first layer's refits and
kept the rest). The normal equations are accumulated in float64 over tokens, so memory does
not grow with the calibration set; padded tokens (``attention_mask == 0``) are left out.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.inputs import as_example_inputs, flatten_tensors
from prunekit.recovery.finetuning import RecoveryError

Forward = Callable[[nn.Module, Any], object]


@dataclass
class Refit:
    """One refitted Linear: relative squared error of its output against the dense layer's,
    on the calibration tokens, before and after; and of the model's output (its first
    tensor), which decides whether the refit is kept."""

    name: str
    error_before: float
    error_after: float
    output_error_before: float
    output_error_after: float
    kept: bool


def _call(model: nn.Module, batch: Any) -> object:
    """Batches as everywhere in prunekit (``inputs.as_example_inputs``): a dict is keyword
    arguments, a tuple positional arguments, a tensor the single argument."""
    return as_example_inputs(batch).call(model)


def pruned_input_linears(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Names of the Linears that read fewer inputs in ``student`` than in ``teacher`` (same
    name, same outputs), in network order."""
    dense = dict(teacher.named_modules())
    names = []
    for name, module in student.named_modules():
        other = dense.get(name)
        if (
            isinstance(module, nn.Linear)
            and isinstance(other, nn.Linear)
            and module.out_features == other.out_features
            and module.in_features < other.in_features
        ):
            names.append(name)
    return names


def _tokens(tensor: torch.Tensor, batch: Any) -> torch.Tensor:
    """Rows of a [..., features] activation, without padded positions when the batch says
    which they are."""
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if mask is not None and tensor.dim() == 3 and tuple(mask.shape) == tuple(tensor.shape[:2]):
        return tensor[mask.bool()]
    return tensor.reshape(-1, tensor.shape[-1])


class _Captured(Exception):
    """Raised by a hook once the wanted input is seen: the rest of the forward is not needed."""


def _parent(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rpartition(".")[0])


def _residual_argument(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The residual ``input_tensor`` a Hugging Face BERT-style output block (``LayerNorm(
    dense(hidden_states) + input_tensor)``) is called with, else None."""
    if "input_tensor" in kwargs:
        return kwargs["input_tensor"]
    try:
        parameters = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return None
    if "input_tensor" in parameters and parameters.index("input_tensor") < len(args):
        return args[parameters.index("input_tensor")]
    return None


def _student_inputs(
    model: nn.Module, name: str, batch: Any, forward: Forward, residual: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The input of ``name`` in ``model`` on ``batch`` and, with ``residual``, the residual
    its block adds to its output (None when there is none); the pass stops right there."""
    seen: list[torch.Tensor] = []
    residuals: list[Any] = []

    def block_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        residuals.append(_residual_argument(module, args, kwargs))

    def hook(_: nn.Module, inputs: tuple[Any, ...]) -> None:
        seen.append(inputs[0])
        raise _Captured

    handles = [model.get_submodule(name).register_forward_pre_hook(hook)]
    if residual:
        handles.append(_parent(model, name).register_forward_pre_hook(block_hook, with_kwargs=True))
    try:
        forward(model, batch)
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise RecoveryError(f"{name} did not run in the forward pass; cannot refit it")
    found = residuals[0] if residuals else None
    rows = _tokens(found.detach(), batch).to(torch.float64) if found is not None else None
    return _tokens(seen[0].detach(), batch).to(torch.float64), rows


def _teacher_outputs(
    model: nn.Module, names: Sequence[str], batch: Any, forward: Forward, residual: bool
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The outputs of every Linear in ``names`` on ``batch`` (with ``residual``, plus the
    residual their block adds) and the model's output (``_output_rows``), from one pass."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    added: dict[str, Any] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: seen[name].append(out.detach())
        )
        for name in names
    ]

    def keep_residual(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            added.setdefault(name, _residual_argument(module, args, kwargs))

        return hook

    if residual:
        handles += [
            _parent(model, name).register_forward_pre_hook(keep_residual(name), with_kwargs=True)
            for name in names
        ]
    try:
        result = _output_rows(forward(model, batch), batch)
    finally:
        for handle in handles:
            handle.remove()
    for name, outputs in seen.items():
        if len(outputs) != 1:
            raise RecoveryError(
                f"{name} ran {len(outputs)} times in one forward pass; cannot refit it"
            )
    layers = {}
    for name, out in seen.items():
        extra = added.get(name)
        total = out[0] + extra.detach() if extra is not None else out[0]
        layers[name] = _tokens(total, batch).to(torch.float32)
    return layers, result


def _output_rows(output: object, batch: Any) -> torch.Tensor:
    """The token rows of a model's output: its first tensor (e.g. the last hidden state)."""
    tensors = flatten_tensors(output)
    if not tensors:
        raise RecoveryError("the model returned no tensor to compare with the dense model's")
    return _tokens(tensors[0].detach(), batch).to(torch.float64)


def _output_error(
    model: nn.Module, batches: Sequence[Any], targets: Sequence[torch.Tensor], forward: Forward
) -> float:
    error = sum(
        float((_output_rows(forward(model, b), b) - t).pow(2).sum())
        for b, t in zip(batches, targets, strict=True)
    )
    return error / max(sum(float(t.pow(2).sum()) for t in targets), 1e-30)


@torch.no_grad()
def reconstruct_linears(
    student: nn.Module,
    teacher: nn.Module,
    batches: Sequence[Any],
    names: Sequence[str] | None = None,
    *,
    ridge: float = 1e-2,
    residual: bool = True,
    forward: Forward = _call,
) -> list[Refit]:
    """Refit ``names`` (default: ``pruned_input_linears``) of ``student`` in place, in order.

    Each input's ridge is ``ridge`` times its own energy (the diagonal of ``X^T X``), so it
    means the same whatever the input's scale; the bias is not regularised. A refit is kept
    only when it brings the model's output (its first tensor, e.g. the last hidden state)
    closer to the dense model's on the calibration data (``Refit.kept``). The dense layers'
    outputs come from one teacher pass per batch; each student pass for a refit stops at the
    Linear being refitted, and one more full pass checks the model's output.

    ``residual``: where the Linear's block adds a residual to its output before normalising
    (Hugging Face BERT-style ``...Output`` blocks, ``LayerNorm(dense(h) + input_tensor)``),
    the target is what the dense model feeds that LayerNorm minus the residual the *pruned*
    model brings: the refit then also corrects what pruning changed upstream in the
    residual stream, instead of reproducing a dense output that the pruned stream no longer
    matches.
    """
    if not batches:
        raise RecoveryError("reconstruction needs at least one calibration batch")
    if ridge < 0:
        raise RecoveryError(f"ridge must be >= 0, got {ridge}")
    names = pruned_input_linears(student, teacher) if names is None else list(names)
    for name in names:
        for model, role in ((student, "student"), (teacher, "teacher")):
            if not isinstance(model.get_submodule(name), nn.Linear):
                raise RecoveryError(f"{name} is not an nn.Linear in the {role}")
    was_training = student.training, teacher.training
    student.eval()
    teacher.eval()
    try:
        targets, outputs = zip(
            *(_teacher_outputs(teacher, names, batch, forward, residual) for batch in batches),
            strict=True,
        )
        error = _output_error(student, batches, outputs, forward)
        refits = []
        for name in names:
            linear = student.get_submodule(name)
            saved = [p.detach().clone() for p in linear.parameters(recurse=False)]
            layer_before, layer_after = _refit(
                student, name, batches, [t[name] for t in targets], ridge, forward, residual
            )
            after = _output_error(student, batches, outputs, forward)
            # A refit that matches its own layer better can still move the model's output
            # away: the Linear's output is added to a residual stream that pruning changed
            # too. Keep it only when the model's output comes closer to the dense model's.
            kept = after < error
            if not kept:
                for param, value in zip(linear.parameters(recurse=False), saved, strict=True):
                    param.copy_(value)
            refits.append(Refit(name, layer_before, layer_after, error, after, kept))
            error = after if kept else error
        return refits
    finally:
        student.train(was_training[0])
        teacher.train(was_training[1])


def _refit(
    student: nn.Module,
    name: str,
    batches: Sequence[Any],
    targets: Sequence[torch.Tensor],
    ridge: float,
    forward: Forward,
    residual: bool,
) -> tuple[float, float]:
    """Solve and apply the refit; the layer's relative errors before and after."""
    linear = student.get_submodule(name)
    assert isinstance(linear, nn.Linear)
    # A column of ones carries the bias; a Linear without one is refitted without one (adding
    # a bias would change the model's parameters and its saved architecture).
    has_bias = linear.bias is not None
    features = linear.in_features + int(has_bias)
    gram = torch.zeros(features, features, dtype=torch.float64)
    cross = torch.zeros(features, linear.out_features, dtype=torch.float64)
    target_energy = 0.0
    old = linear.weight.detach()
    if linear.bias is not None:
        old = torch.cat([old, linear.bias.detach()[:, None]], 1)
    old = old.to(torch.float64).T
    old_error = 0.0
    for batch, target in zip(batches, targets, strict=True):
        x, student_residual = _student_inputs(student, name, batch, forward, residual)
        y = target.to(torch.float64)
        if student_residual is not None:
            y = y - student_residual  # the target held the dense model's residual too
        if x.shape[0] != y.shape[0]:
            raise RecoveryError(
                f"{name}: the student gives {x.shape[0]} input rows but the teacher "
                f"{y.shape[0]} output rows for the same batch"
            )
        if has_bias:
            x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
        gram += x.T @ x
        cross += x.T @ y
        target_energy += float(y.pow(2).sum())
        old_error += float((x @ old - y).pow(2).sum())
    penalty = ridge * gram.diagonal().clone()
    if has_bias:
        penalty[-1] = 0.0
    solution = torch.linalg.solve(gram + torch.diag(penalty), cross)
    # ||XW - Y||^2 = tr(W^T G W) - 2 tr(W^T C) + ||Y||^2, from the accumulated sums.
    new_error = float((solution * (gram @ solution)).sum() - 2 * (solution * cross).sum())
    new_error += target_energy
    scale = max(target_energy, 1e-30)
    if new_error < old_error:
        linear.weight.copy_(solution[: linear.in_features].T.to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.copy_(solution[-1].to(linear.bias.dtype))
    return old_error / scale, min(new_error, old_error) / scale
