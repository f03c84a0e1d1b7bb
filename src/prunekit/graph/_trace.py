"""Run a model once and let every torch operation move channel labels.

A ``TorchFunctionMode`` sees each torch function and tensor method called in ``forward``
(``F.conv2d``, ``x.view``, ``x + y``, ``torch.cat``, ``torchvision.ops.roi_align``...), with
the Python-level arguments (a ``-1`` in a view is still visible). Forward hooks keep track of
the module being executed, for messages, and make modules with a module rule atomic.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from prunekit.graph._context import RuleContext, tensors_in
from prunekit.graph._fast_meta import fast_meta_norm
from prunekit.graph._registry import function_rule_for, module_rule_for

log = logging.getLogger(__name__)

# Calls that read metadata or leave the tensor world: nothing to propagate.
_IGNORED = frozenset(
    {
        "size", "dim", "numel", "stride", "is_contiguous", "data_ptr", "element_size",
        "len", "bool", "int", "float_", "index", "format", "repr", "hash", "tolist", "item",
        "is_floating_point", "is_complex", "_assert", "get_device", "nelement", "ndimension",
        "storage_offset", "untyped_storage", "is_nonzero", "equal", "allclose", "isfinite_",
        "getattr:shape", "getattr:dtype", "getattr:device", "getattr:ndim", "getattr:is_cuda",
        "getattr:requires_grad", "getattr:grad_fn", "getattr:layout", "getattr:is_meta",
        "getattr:is_sparse", "getattr:names", "getattr:is_leaf", "getattr:grad",
        "getattr:is_quantized", "getattr:itemsize", "getattr:nbytes", "getattr:_version",
        "getattr:is_nested", "getattr:is_cpu", "getattr:output_nr", "getattr:_base",
        "getattr:is_mps", "getattr:is_xpu",
    }
)  # fmt: skip
# Factories whose result holds no data yet: writing labelled values into them is safe.
_BLANK_FACTORIES = frozenset(
    {"zeros", "zeros_like", "new_zeros", "empty", "empty_like", "new_empty", "full", "full_like", "new_full"}
)  # fmt: skip
_INPLACE_DUNDERS = frozenset(
    {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift"}
)  # fmt: skip


def op_name(func: Any) -> str:
    """Canonical rule name of a torch function, method, operator or attribute access."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":
        return "getattr:" + getattr(getattr(func, "__self__", None), "__name__", "?")
    if name.startswith("__") and name.endswith("__"):
        core = name[2:-2]
        if core.startswith("i") and core[1:] in _INPLACE_DUNDERS:
            return core[1:] + "_"
        if core.startswith("r") and core[1:] in _INPLACE_DUNDERS:
            return "r" + core[1:]
        return core
    return name


class _Tracer(TorchFunctionMode):
    def __init__(self, ctx: RuleContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.stack: list[str] = []
        self.atomic_depth = 0
        self.unsupported: Counter[str] = Counter()
        self.rule_errors: list[str] = []
        self.executed: set[str] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = fast_meta_norm(func, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        if self.atomic_depth:
            return out
        name = op_name(func)
        if name in _IGNORED:
            return out
        ctx = self.ctx
        if name in _BLANK_FACTORIES:
            for t in tensors_in(out):
                ctx.mark_blank(t)
            return out
        inputs = list(tensors_in((args, kwargs)))
        if not any(ctx.factors(t) for t in inputs):
            return out
        ctx.op, ctx.where = name, (self.stack[-1] if self.stack else "")
        rule = function_rule_for(name)
        if rule is None:
            self.unsupported[ctx.reason()] += 1
            ctx.block_tensors(inputs, "operation not understood by prunekit")
            return out
        try:
            rule(ctx, args, kwargs, out)
        except Exception as exc:  # a rule that cannot handle these arguments: stay safe
            message = f"{ctx.reason()}: rule failed ({type(exc).__name__}: {exc})"
            log.debug(message, exc_info=True)
            self.rule_errors.append(message)
            ctx.block_tensors(inputs, "rule failed")
            ctx.block_tensors(list(tensors_in(out)), "rule failed")
        if inputs and all(ctx.is_param_derived(t) for t in inputs):
            for t in tensors_in(out):
                ctx.set(t, ctx.factors(t), param_derived=True)
        return out


def _install_hooks(model: nn.Module, tracer: _Tracer) -> list[Any]:
    handles = []
    atomic_calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    for fqn, module in model.named_modules():
        rule = module_rule_for(module)
        where = fqn or f"{type(module).__name__}.forward"

        def pre(m: nn.Module, args: Any, kwargs: Any, where: str = where, rule: Any = rule) -> None:
            tracer.stack.append(where)
            tracer.executed.add(where)
            if rule is not None:
                if tracer.atomic_depth == 0:
                    atomic_calls[id(m)] = (args, kwargs)
                tracer.atomic_depth += 1

        def post(
            m: nn.Module, args: Any, kwargs: Any, out: Any, where: str = where, rule: Any = rule
        ) -> None:
            tracer.stack.pop()
            if rule is None:
                return
            tracer.atomic_depth -= 1
            if tracer.atomic_depth:
                return
            call_args, call_kwargs = atomic_calls.pop(id(m))
            ctx = tracer.ctx
            ctx.op, ctx.where = type(m).__name__, where
            try:
                rule(ctx, m, call_args, call_kwargs, out)
            except Exception as exc:
                message = f"{ctx.reason()}: module rule failed ({type(exc).__name__}: {exc})"
                log.debug(message, exc_info=True)
                tracer.rule_errors.append(message)
                ctx.block_tensors(list(tensors_in((call_args, call_kwargs, out))), "rule failed")

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True))
    return handles


def run_traced(
    model: nn.Module, ctx: RuleContext, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _Tracer:
    """Run ``model(*args, **kwargs)`` under the tracer; labels of the outputs are blocked."""
    tracer = _Tracer(ctx)
    handles = _install_hooks(model, tracer)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # keep MultiheadAttention's ops visible
    try:
        with torch.no_grad(), tracer:
            out = model(*args, **kwargs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in handles:
            h.remove()
    ctx.op, ctx.where = "model output", ""
    for t in tensors_in(out):
        for f in ctx.factors(t):
            ctx.space.block(f.labels, "model output (its channels are what the model returns)")
    return tracer
