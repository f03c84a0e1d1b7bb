"""A small U-Net for semantic segmentation (Ronneberger et al., 2015), sized for CPU benchmarks.

``depth`` encoder stages of two 3x3 Conv + BatchNorm + ReLU each, a 2x2 max-pool between
them, a bottleneck stage, then ``depth`` decoder stages that upsample (bilinear, or a 2x2
transposed convolution), concatenate the encoder stage of the same resolution (the skip) and
apply two 3x3 Conv + BatchNorm + ReLU; a 1x1 convolution gives the class logits. Widths double
at each stage down: ``width, 2 width, ..., 2**depth width`` at the bottleneck.

Input ``[B, in_channels, H, W]`` with any ``H, W`` (a side that does not halve evenly is
matched to its skip by the upsampling), output logits ``[B, num_classes, H, W]``. The
defaults (5 classes) match the generated scenes (``prunekit.data.scenes.CLASSES``, the
``scenes-masks`` data spec). ``unet`` is the builder a ``module:callable`` model spec names
(``prunekit.nn.unet:unet``); saved artifacts of it load without ``--trust-code``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import InvalidValueError

__all__ = ["UPSAMPLING", "UNet", "unet"]

UPSAMPLING = ("bilinear", "transposed")


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
    )  # fmt: skip


def _positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class UNet(nn.Module):
    """Encoder-decoder with skip concatenations; see the module docstring.

    Submodules: ``enc`` (``depth`` stages), ``bottom``, ``up`` (``depth`` 2x2 transposed
    convolutions, only with ``upsample="transposed"``), ``dec`` (``depth`` stages, coarsest
    first) and ``head`` (1x1 conv to ``num_classes``).
    """

    def __init__(
        self,
        num_classes: int = 5,
        width: int = 16,
        depth: int = 3,
        in_channels: int = 3,
        upsample: str = "bilinear",
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("width", width), ("depth", depth),
                            ("in_channels", in_channels)):  # fmt: skip
            _positive(value, name)
        if upsample not in UPSAMPLING:
            raise InvalidValueError(
                f"upsample must be one of {', '.join(UPSAMPLING)}, got {upsample!r}"
            )
        self.upsample = upsample
        widths = [width * 2**i for i in range(depth + 1)]
        self.enc = nn.ModuleList(
            [_stage(in_channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth)]
        )
        self.bottom = _stage(widths[depth - 1], widths[depth])
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i + 1], widths[i + 1], 2, stride=2)
             for i in reversed(range(depth))] if upsample == "transposed" else []
        )  # fmt: skip
        self.dec = nn.ModuleList(
            [_stage(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))]
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.enc:
            x = stage(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for i, (stage, skip) in enumerate(zip(self.dec, reversed(skips), strict=True)):
            if self.upsample == "transposed":
                x = self.up[i](x)
                if x.shape[-2:] != skip.shape[-2:]:  # an odd side: pad / crop to the skip
                    x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            else:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        return self.head(x)


def unet(
    num_classes: int = 5,
    width: int = 16,
    depth: int = 3,
    in_channels: int = 3,
    upsample: str = "bilinear",
) -> UNet:
    """``UNet`` factory (a ``module:callable`` model spec: ``prunekit.nn.unet:unet``)."""
    return UNet(num_classes, width, depth, in_channels, upsample)
