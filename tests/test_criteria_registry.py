"""The one registry of importance criteria: names without torch, every entry importable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from prunekit.criteria.registry import CRITERIA, CriterionError, criterion_names, load


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip()


def test_names_are_listed_without_importing_torch() -> None:
    out = _run(
        "import sys\n"
        "from prunekit.criteria import criterion_names\n"
        "print(','.join(criterion_names()), 'torch' in sys.modules)"
    )
    assert out == "l1,l2,taylor,bn_scale,mean_activation,apoz,random False"


def test_names_split_by_need_for_data() -> None:
    assert criterion_names(needs_data=True) == ("taylor", "mean_activation", "apoz")
    assert criterion_names(needs_data=False) == ("l1", "l2", "bn_scale", "random")


@pytest.mark.parametrize("name", list(CRITERIA))
def test_every_entry_names_an_importable_score_function(name: str) -> None:
    score = load(name)
    assert callable(score)
    assert score.__code__.co_varnames[:3] == ("model", "graph", "request")


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(
        CriterionError, match="unknown importance criterion 'fisher'; choose one of: l1, l2, taylor"
    ):
        load("fisher")


def test_functions_named_like_their_module_stay_functions() -> None:
    out = _run(
        "import prunekit.criteria.head_importance, prunekit.criteria.layer_importance\n"
        "import prunekit.criteria as c\n"
        "print(type(c.head_importance).__name__, type(c.layer_importance).__name__)"
    )
    assert out == "function function"
