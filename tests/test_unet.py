"""The small U-Net (prunekit.nn.unet): shapes, arguments, and that sparsity finds its weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import InvalidValueError
from prunekit.nn import UNet, unet


@pytest.mark.parametrize(
    ("kwargs", "size"),
    [({}, (64, 64)), ({"upsample": "transposed"}, (64, 64)), ({"depth": 2, "width": 4}, (45, 37)),
     ({"depth": 1, "num_classes": 2, "in_channels": 1, "upsample": "transposed"}, (33, 20))],
)  # fmt: skip
def test_logits_have_the_input_size_and_one_map_per_class(
    kwargs: dict[str, object], size: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    model = unet(**kwargs).eval()  # type: ignore[arg-type]
    channels = int(kwargs.get("in_channels", 3))  # type: ignore[call-overload]
    classes = int(kwargs.get("num_classes", 5))  # type: ignore[call-overload]
    x = torch.rand(2, channels, *size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, classes, *size)
    assert torch.isfinite(out).all()


def test_layout_widths_and_skip_concatenations() -> None:
    model = unet(num_classes=5, width=16, depth=3)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    # encoder 16, 32, 64; bottleneck 128; decoders read upsampled + skip channels
    assert [convs[f"enc.{i}.0"].out_channels for i in range(3)] == [16, 32, 64]
    assert convs["bottom.0"].out_channels == 128
    assert [convs[f"dec.{i}.0"].in_channels for i in range(3)] == [128 + 64, 64 + 32, 32 + 16]
    assert convs["head"].out_channels == 5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2 * 7
    assert not list(model.up)  # bilinear upsampling has no weights
    assert len(unet(upsample="transposed").up) == 3


def test_the_skips_carry_information() -> None:
    """The output at full resolution depends on the first encoder stage through its skip:
    zeroing that stage's skip path changes fine detail the bottleneck alone cannot give."""
    torch.manual_seed(0)
    model = unet(width=4).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        base = model(x)
        first_dec = model.get_submodule("dec.2.0")
        assert isinstance(first_dec, nn.Conv2d)
        skip_part = first_dec.weight[:, -4:]  # the channels read from enc.0 (concatenated last)
        skip_part.zero_()
        assert not torch.allclose(model(x), base)


def test_sparsity_finds_every_conv_weight() -> None:
    from prunekit.sparsity import magnitude_masks
    from prunekit.sparsity.allocation import target_weights

    model = unet(width=8)
    found = target_weights(model)
    convs = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert list(found) == convs
    assert len(found) == 2 * 3 + 2 + 2 * 3 + 1
    masks = magnitude_masks({n: w.detach() for n, w in found.items()}, 0.9)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert abs(kept / total - 0.1) < 0.01


def test_channel_pruning_removes_channels_and_keeps_the_output_shape() -> None:
    """Structured pruning traces it (the concatenated skips couple encoder and decoder
    channels) and removes channels; the logits keep their shape."""
    import prunekit as pk

    torch.manual_seed(0)
    model = unet(width=8).eval()
    before = sum(p.numel() for p in model.parameters())
    pk.prune_(model, torch.rand(1, 3, 32, 32), pk.StructuredPruning(ratio=0.5))
    assert sum(p.numel() for p in model.parameters()) < 0.5 * before
    assert model.get_submodule("enc.0.0").out_channels == 4
    assert model.head.out_channels == 5
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5, 32, 32)


def test_bad_arguments_say_which() -> None:
    with pytest.raises(InvalidValueError, match="upsample"):
        UNet(upsample="nearest")
    with pytest.raises(InvalidValueError, match="depth"):
        UNet(depth=0)
    with pytest.raises(InvalidValueError, match="width"):
        UNet(width=True)
