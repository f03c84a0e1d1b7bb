"""Multilayer perceptrons described by a layer-width string such as ``784-300-100-10``."""

from __future__ import annotations

import itertools
import re

import torch
from torch import nn

from prunekit.errors import DeploymentError

LENET_300_100 = "784-300-100-10"


def parse_arch(text: str) -> list[int]:
    """``"784-300-100-10"`` -> ``[784, 300, 100, 10]``: input, hidden widths, classes."""
    if not re.fullmatch(r"\s*\d+(\s*-\s*\d+)+\s*", text):
        raise DeploymentError(
            f"cannot parse architecture {text!r}: expected layer widths joined by '-', input "
            f"first and classes last, such as {LENET_300_100}"
        )
    widths = [int(part) for part in text.split("-")]
    if any(width < 1 for width in widths):
        raise DeploymentError(f"architecture {text!r} has a layer of width 0")
    return widths


def build_mlp(widths: list[int], seed: int = 0) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last: it produces the logits)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def check_fits_data(widths: list[int], features: int, classes: int, dataset: str) -> None:
    if widths[0] != features:
        raise DeploymentError(
            f"the architecture's input width is {widths[0]} but {dataset} samples have "
            f"{features} features; start the architecture with {features}"
        )
    if widths[-1] < classes:
        raise DeploymentError(
            f"the architecture ends with {widths[-1]} outputs but {dataset} has {classes} "
            f"classes; end it with {classes}"
        )
