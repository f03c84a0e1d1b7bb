"""``pk.compress_for_mcu``: fit an MLP classifier into a flash budget (see ``prunekit.mcu``)."""

from __future__ import annotations

from typing import Any

from torch import nn


def compress_for_mcu(
    model: nn.Sequential,
    data: str,
    budget: int | str,
    *,
    recipe: Any = None,
    value_bits: tuple[int, ...] = (8, 4, 3),
    method: str = "prunekit",
    data_dir: str | None = None,
    seed: int = 0,
    log: Any = None,
) -> Any:
    """Compress a trained ``nn.Sequential`` MLP to ``budget`` bytes of flash (an int or
    ``"6KB"``) on ``data`` (``digits``, ``mnist``, ``fashion-mnist``): returns the
    ``Compression`` whose ``.best`` candidate is the most accurate that fits, chosen on a
    validation split and reported on the test split. The input model is not changed."""
    from prunekit._units import parse_bytes
    from prunekit.mcu.compress import Recipe, compress_to_budget
    from prunekit.mcu.datasets import load_splits

    nbytes = parse_bytes(budget) if isinstance(budget, str) else int(budget)
    splits = load_splits(data, data_dir, seed=seed)
    return compress_to_budget(model, splits, nbytes, recipe or Recipe.quick(),
                              value_bits=value_bits, method=method,
                              log=log or (lambda _: None))  # fmt: skip
