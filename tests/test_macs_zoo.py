"""MACs of every torchvision classification model against torchvision's published figure.

torchvision's weights enums carry ``meta["_ops"]``: GMACs of one image at the weights' crop
size. Counting runs on the meta device (shapes only), so the whole zoo takes seconds.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision.models as tvm
from torchvision.models import get_model, get_model_weights

from prunekit.measure.macs import count_macs


def _entries() -> list[tuple[str, str]]:
    entries = []
    for name in tvm.list_models(module=tvm):
        for weights in get_model_weights(name):
            if "_ops" in weights.meta and weights.meta.get("categories"):
                entries.append((name, weights.name))
    return entries


ENTRIES = _entries()


def _build_on_meta(name: str, num_classes: int, image_size: int) -> torch.nn.Module:
    kwargs = {"num_classes": num_classes}
    if name.startswith("vit_"):
        kwargs["image_size"] = image_size  # SWAG weights run ViTs at 384/512/518
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            with torch.device("meta"):
                return get_model(name, weights=None, **kwargs)
        except NotImplementedError:
            # RegNet computes its widths with tensor ops that cannot run on meta.
            return get_model(name, weights=None, **kwargs).to("meta")


def test_zoo_is_complete() -> None:
    # Every classification model has at least one weights entry with a published figure.
    names = {n for n, _ in ENTRIES}
    assert names == set(tvm.list_models(module=tvm))
    assert len(names) >= 80


@pytest.mark.parametrize(("name", "weights_name"), ENTRIES, ids=[f"{n}-{w}" for n, w in ENTRIES])
def test_macs_match_torchvision_published(name: str, weights_name: str) -> None:
    weights = get_model_weights(name)[weights_name]
    side = weights.transforms().crop_size[0]
    model = _build_on_meta(name, len(weights.meta["categories"]), side)
    macs = count_macs(model, torch.empty(1, 3, side, side, device="meta"))
    published = weights.meta["_ops"] * 1e9
    assert macs.total == pytest.approx(published, rel=0.02)
    assert sum(macs.by_module.values()) == macs.total
