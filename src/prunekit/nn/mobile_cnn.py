"""A small MobileNetV2-style CNN for 28x28 grey images (Fashion-MNIST, MNIST): the model of
the mobile-CNN tutorial and of ``benchmarks/recipe.py``.

A stem convolution, then inverted residual blocks (1x1 expansion, 3x3 depthwise, 1x1
projection; a skip connection where the shape allows), global pooling and a linear
classifier: the structure prunekit's channel graph couples across residual adds, and the
layer mix (memory-bound depthwise, compute-bound 1x1) of a phone model, at a size that
trains on a laptop CPU in a minute per epoch.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_skip = stride == 1 and cin == cout
        self.block = nn.Sequential(
            _conv_bn(cin, hidden, 1),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_skip else out


class MobileCNN(nn.Module):
    """``MobileCNN(num_classes=10, in_channels=1, width=1.0)``; input [batch, 1, 28, 28]."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()

        def w(c: int) -> int:
            return max(8, round(c * width / 8) * 8)

        # (expansion, out channels, blocks, first stride)
        settings = [(1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 1, 1)]
        # the stem halves the resolution (28 -> 14): most of a phone model's cost at 224 px
        layers: list[nn.Module] = [_conv_bn(in_channels, w(32), 3, stride=2)]
        cin = w(32)
        for expand, c, n, s in settings:
            for i in range(n):
                layers.append(InvertedResidual(cin, w(c), s if i == 0 else 1, expand))
                cin = w(c)
        layers.append(_conv_bn(cin, w(128), 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(w(128), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
