"""Where tracing rules live: one table for torch functions, one for module types.

A *function rule* explains one torch operation (``linear``, ``cat``, ``view``...) in terms of
channel labels. A *module rule* makes a module atomic: its inside is not traced, and the rule
explains the whole module at once; used for modules whose forward hard-codes shapes that
pruning changes (attention implementations). Both tables are open: users register rules for
their own operations and modules with ``register_function_rule`` / ``register_module_rule``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from prunekit.graph._context import RuleContext

FunctionRule = Callable[[RuleContext, tuple[Any, ...], dict[str, Any], Any], None]
ModuleRule = Callable[[RuleContext, nn.Module, tuple[Any, ...], dict[str, Any], Any], None]

FUNCTION_RULES: dict[str, FunctionRule] = {}
MODULE_RULES: dict[type, ModuleRule] = {}


def register_function_rule(*names: str) -> Callable[[FunctionRule], FunctionRule]:
    """Register ``rule(ctx, args, kwargs, out)`` for torch functions/methods named ``names``.

    Names are the function's ``__name__`` (``"conv2d"``, ``"view"``), with operators spelled
    without underscores (``__add__`` -> ``"add"``, ``__iadd__`` -> ``"add_"``). In-place
    variants fall back to the out-of-place rule when they have none of their own.
    """

    def decorate(rule: FunctionRule) -> FunctionRule:
        for name in names:
            FUNCTION_RULES[name] = rule
        return rule

    return decorate


def register_module_rule(module_type: type) -> Callable[[ModuleRule], ModuleRule]:
    """Register ``rule(ctx, module, args, kwargs, output)``; the module is then not traced inside.

    The rule applies to subclasses too, unless they override ``forward`` (a different forward
    may compute something else, so it is traced op by op instead).
    """

    def decorate(rule: ModuleRule) -> ModuleRule:
        MODULE_RULES[module_type] = rule
        return rule

    return decorate


def module_rule_for(module: nn.Module) -> ModuleRule | None:
    for cls in type(module).__mro__:
        rule = MODULE_RULES.get(cls)
        if rule is not None:
            return rule if type(module).forward is cls.forward else None  # type: ignore[attr-defined]
    return None


def function_rule_for(name: str) -> FunctionRule | None:
    rule = FUNCTION_RULES.get(name)
    if rule is None and name.endswith("_") and not name.endswith("__"):
        rule = FUNCTION_RULES.get(name[:-1])
    return rule
