"""The floor plan: no module of prunekit imports one on a floor above its own.

Every module under src/prunekit is parsed (not imported) and every ``import`` / ``from ...
import`` it contains counts, including those inside functions (a lazy import is still a
dependency) and under ``TYPE_CHECKING``. A package on a floor may import its own floor and the
floors below; several packages on one floor may import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# bottom to top; a name covers the module and everything under it
FLOORS: list[tuple[str, ...]] = [
    # ground floor: plumbing every package may use
    (
        "prunekit._version",
        "prunekit._outputs",
        "prunekit._files",
        "prunekit._utils",
        "prunekit._checks",
        "prunekit._progress",
        "prunekit._tensors",
        "prunekit._units",
        "prunekit.errors",
        "prunekit.inputs",
    ),
    # self-contained toolkits that know nothing of channel groups: layers, masks, datasets,
    # metrics, and measurement (MACs, parameters, latency)
    (
        "prunekit.nn",
        "prunekit.sparsity",
        "prunekit.data",
        "prunekit.evaluate",
        "prunekit.measure",
    ),
    ("prunekit.graph",),  # trace a model into coupled channel groups
    ("prunekit.criteria",),  # score: importance of every group's channels
    ("prunekit.pruning",),  # select and apply: remove channels
    ("prunekit.planning",),  # sensitivity, latency tables, plans for a budget
    ("prunekit.artifact", "prunekit.hf"),  # formats: prunekit artifacts, Hugging Face
    ("prunekit.models",),  # load a model from any source, recipes
    ("prunekit.recovery",),  # fine-tuning, distillation, reconstruction
    ("prunekit.mcu",),  # the microcontroller pipeline
    ("prunekit.report",),  # the management report, from the outputs of commands
    # the front door: verbs and configs, re-exported by the package root (``import prunekit``)
    ("prunekit.api", "prunekit"),
    ("prunekit.cli", "prunekit.__main__"),
]

# Known violations, each (importer, imported) by module name. Shrink this list; never grow it
# without a reason written next to the entry.
ALLOWED: set[tuple[str, str]] = {
    # ``pk.evaluate`` is the evaluate package made callable; the call runs the front door's verb
    ("prunekit.evaluate", "prunekit.api.evaluation"),
    # the artifact format builds models from recipes
    ("prunekit.artifact._recipes", "prunekit.models.callable_source"),
    ("prunekit.artifact._recipes", "prunekit.models.huggingface_source"),
    ("prunekit.artifact._recipes", "prunekit.models.torchvision_source"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted((SRC / "prunekit").rglob("*.py"))}


def _resolve(name: str) -> str:
    """``prunekit.x.y`` as a module: an attribute (``from prunekit import __version__``) names
    the module that holds it."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str) -> set[tuple[str, int]]:
    """The prunekit modules ``module`` imports, with the line of each import."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "prunekit" or target.startswith("prunekit."):
                found.add((_resolve(target), node.lineno))
    return found


def floor_of(module: str) -> int:
    best, floor = "", -1
    for index, names in enumerate(FLOORS):
        for name in names:
            covers = module == name or module.startswith(name + ".")
            if covers and len(name) > len(best):
                best, floor = name, index
    return floor


def test_every_module_is_on_a_floor() -> None:
    homeless = sorted(m for m in MODULES if floor_of(m) < 0)
    assert not homeless, f"add these modules to FLOORS in {__file__}: {homeless}"


def _violations() -> set[tuple[str, str, int]]:
    return {
        (module, target, line)
        for module in MODULES
        for target, line in imports_of(module)
        if floor_of(target) > floor_of(module)
    }


def test_no_import_runs_up_a_floor() -> None:
    found = sorted(v for v in _violations() if v[:2] not in ALLOWED)
    assert not found, "imports running up a floor:\n" + "\n".join(
        f"  {MODULES[m].relative_to(SRC)}:{line}: {m} imports {t}" for m, t, line in found
    )


def test_the_allow_list_holds_only_real_violations() -> None:
    stale = ALLOWED - {v[:2] for v in _violations()}
    assert not stale, f"fixed, remove from ALLOWED: {sorted(stale)}"


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from prunekit import __version__", "prunekit._outputs", {"prunekit"}),
        ("from . import rules", "prunekit.graph", {"prunekit.graph.rules"}),
        ("from ..errors import PrunekitError", "prunekit.graph._trace", {"prunekit.errors"}),
        ("def f():\n    import prunekit.cli.main", "prunekit.errors", {"prunekit.cli.main"}),
    ],
)
def test_imports_are_resolved_to_modules(
    source: str, module: str, expected: set[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / ("__init__.py" if module == "prunekit.graph" else "m.py")
    fake.write_text(source)
    monkeypatch.setitem(MODULES, module, fake)
    assert {target for target, _ in imports_of(module)} == expected
