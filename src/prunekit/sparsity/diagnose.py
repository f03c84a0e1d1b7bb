"""Diagnosis pictures: where a sparse segmentation model stopped seeing what the dense one saw.

``write_diagnosis(dense, variants, image, out_dir)`` runs one image through the dense model and
through each sparse variant (same architecture, weights zeroed by unstructured or N:M
sparsity) and writes PNGs about one layer:

* ``mask-<variant>.png``: the layer's weight mask in each variant (kept = dark), and for a
  convolution the kept fraction of every (output, input) kernel and of every output channel;
* ``features.png``: the layer's output feature maps, dense vs each variant and their absolute
  difference, for the output channels the first variant cut most;
* ``boundary-<variant>.png`` (models whose output is segmentation logits ``[1, classes, H,
  W]``): the predicted segmentation dense vs the variant, the pixels whose predicted class
  changed, the kept fraction of every output channel of the layer, and the dense and sparse
  activations of the most-pruned channels with the changed pixels outlined over them: which
  channels lost most weights, and what they saw where the segmentation boundary moved.

Which layer (``choose_layer``), when none is named: among the convolutions present with the same
weight shape in the dense model and every variant (Linear layers only when there is no such
convolution), with two or more variants the one whose masks differ most between variants (the
largest fraction of weight positions kept in one variant and zeroed in another, over every pair
of variants); with one variant, or when every mask agrees, the one the first variant pruned most
(lowest fraction of weights kept). Ties go to the earlier layer in module order.

Pictures are drawn with matplotlib without pyplot (``matplotlib.figure.Figure``: nothing global
to leak); matplotlib and Pillow are imported only when something is drawn or read.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "MAX_CHANNELS",
    "changed_pixels",
    "channel_kept",
    "choose_layer",
    "load_image",
    "mask_disagreement",
    "predicted_classes",
    "weighted_modules",
    "write_diagnosis",
]

MAX_CHANNELS = 6
"""Feature maps drawn per row of ``features.png`` (the most-pruned output channels)."""
_BOUNDARY_CHANNELS = 4  # channels drawn in a boundary picture
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_CHANGED = np.array([1.0, 0.1, 0.1], dtype=np.float32)  # the colour of changed pixels


# ---------------------------------------------------------------------------------------------
# facts


def weighted_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv1d/2d/3d and Linear module with a materialised weight, by qualified name, in
    module order (also what the report's mask pictures draw)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, _WEIGHTED)
        and isinstance(module.weight, Tensor)
        and not isinstance(module.weight, nn.parameter.UninitializedParameter)
    }


def _weight(module: nn.Module) -> Tensor:
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight.detach()


def channel_kept(weight: Tensor) -> Tensor:
    """float64 [out]: the fraction of each output channel's (row's) weights that are not zero."""
    if weight.dim() < 2:
        raise ValueError(f"expected a weight [out, in, ...], got shape {tuple(weight.shape)}")
    return (weight.detach() != 0).flatten(1).to(torch.float64).mean(1)


def _shared(dense: nn.Module, variants: Mapping[str, nn.Module]) -> dict[str, list[Tensor]]:
    """Weighted layers present in the dense model and every variant with one weight shape:
    name -> [dense weight, weight of each variant]."""
    found = weighted_modules(dense)
    others = [weighted_modules(model) for model in variants.values()]
    shared: dict[str, list[Tensor]] = {}
    for name, module in found.items():
        weights = [_weight(module)]
        for modules in others:
            if name not in modules or _weight(modules[name]).shape != weights[0].shape:
                break
            weights.append(_weight(modules[name]))
        else:
            shared[name] = weights
    return shared


def mask_disagreement(weights: Sequence[Tensor]) -> float:
    """The largest fraction of positions whose kept / zeroed state differs between two of
    ``weights`` (same shape), over every pair; 0 for fewer than two."""
    masks = [w.detach() != 0 for w in weights]
    return max(
        (float((a != b).to(torch.float64).mean()) for a, b in itertools.combinations(masks, 2)),
        default=0.0,
    )


def _check_variants(variants: Mapping[str, nn.Module]) -> None:
    if not isinstance(variants, Mapping) or not variants:
        raise ValueError("variants must be a non-empty mapping of name -> sparse model")
    for name, model in variants.items():
        if not isinstance(model, nn.Module):
            raise TypeError(f"variant {name!r} is a {type(model).__name__}, not an nn.Module")


def _candidates(dense: nn.Module, variants: Mapping[str, nn.Module]) -> dict[str, list[Tensor]]:
    shared = _shared(dense, variants)
    convs = {name: ws for name, ws in shared.items() if ws[0].dim() > 2}
    found = convs or shared
    if not found:
        raise ValueError(
            "no Conv or Linear layer has the same weight shape in the dense model and every "
            "variant (diagnosis compares unstructured or N:M sparse copies of one model)"
        )
    return found


def choose_layer(dense: nn.Module, variants: Mapping[str, nn.Module]) -> str:
    """The layer ``write_diagnosis`` draws when none is named; the rule is in the module
    docstring. Returns the module's qualified name."""
    _check_variants(variants)
    layer, _ = _choose(dense, variants)
    return layer


def _choose(dense: nn.Module, variants: Mapping[str, nn.Module]) -> tuple[str, str]:
    """(layer, why)."""
    found = _candidates(dense, variants)
    if len(variants) >= 2:
        spread = {name: mask_disagreement(ws[1:]) for name, ws in found.items()}
        best = max(spread, key=lambda name: spread[name])  # the first of equals
        if spread[best] > 0:
            return best, f"masks differ most between variants ({spread[best]:.1%} of weights)"
    kept = {name: float((ws[1] != 0).to(torch.float64).mean()) for name, ws in found.items()}
    first = next(iter(variants))
    best = min(kept, key=lambda name: kept[name])
    return best, f"pruned most in {first} ({kept[best]:.1%} of weights kept)"


def _logits(output: Any) -> Tensor | None:
    """[B, classes, H, W] segmentation logits of a model's output, or None if it is not one."""
    if isinstance(output, dict) and "out" in output:
        output = output["out"]
    output = getattr(output, "logits", output)
    if isinstance(output, Tensor) and output.dim() == 4 and output.shape[1] >= 2:
        return output
    return None


def _batch(image: Tensor) -> Tensor:
    if not isinstance(image, Tensor) or image.dim() not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a tensor [C, H, W] (or [1, C, H, W]), got {shape}")
    return (image if image.dim() == 4 else image.unsqueeze(0))[:1].detach()


def _run(
    model: nn.Module, batch: Tensor, module: nn.Module | None = None
) -> tuple[Any, Tensor | None]:
    """``model``'s output on ``batch`` (eval mode, no grad, training flags restored) and
    ``module``'s output for the first sample (float32, CPU), captured by a forward hook."""
    seen: dict[str, Tensor] = {}

    def hook(_: nn.Module, __: Any, output: Any) -> None:
        seen.setdefault("output", output.detach()[0].float().cpu())

    param = next(model.parameters(), None)
    device = param.device if param is not None else batch.device
    modes = {m: m.training for m in model.modules()}
    handle = module.register_forward_hook(hook) if module is not None else None
    try:
        model.eval()
        with torch.no_grad():
            output = model(batch.to(device))
    finally:
        if handle is not None:
            handle.remove()
        for m, training in modes.items():
            m.train(training)
    if module is not None and "output" not in seen:
        raise ValueError("the layer was not called when the model ran on the image")
    return output, seen.get("output")


def predicted_classes(model: nn.Module, image: Tensor) -> Tensor | None:
    """int64 [H, W]: the class ``model`` predicts at each pixel of ``image`` ([C, H, W] or
    [1, C, H, W]); None when its output is not segmentation logits [1, classes, H, W]."""
    output, _ = _run(model, _batch(image))
    logits = _logits(output)
    return None if logits is None else logits[0].argmax(0).cpu()


def changed_pixels(dense: nn.Module, variant: nn.Module, image: Tensor) -> Tensor:
    """bool [H, W]: the pixels of ``image`` whose predicted class differs between ``dense``
    and ``variant`` (segmentation models)."""
    before, after = predicted_classes(dense, image), predicted_classes(variant, image)
    if before is None or after is None:
        raise ValueError("changed_pixels needs models that output segmentation logits")
    return before != after


def load_image(
    path: str | Path,
    size: int | tuple[int, int] | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """A PNG / JPEG (anything Pillow reads) as a model input: float32 [3, H, W] in [0, 1],
    RGB. ``size``: an int resizes to a ``size x size`` square, ``(height, width)`` to that,
    bilinearly; None keeps the file's size. ``mean`` / ``std`` (per channel): normalise as
    the model was trained (e.g. ImageNet's, as a segmentation folder's items are)."""
    from PIL import Image

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no image file {file}")
    try:
        with Image.open(file) as opened:
            rgb = opened.convert("RGB")
    except OSError as exc:
        raise ValueError(f"{file}: not an image Pillow can read ({exc})") from None
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        if isinstance(height, bool) or not isinstance(height, int) or height < 1 or width < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
        rgb = rgb.resize((int(width), int(height)), Image.Resampling.BILINEAR)
    pixels = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    if mean is not None or std is not None:
        m = torch.tensor(list(mean) if mean is not None else [0.0] * 3).view(3, 1, 1)
        s = torch.tensor(list(std) if std is not None else [1.0] * 3).view(3, 1, 1)
        tensor = (tensor - m) / s
    return tensor


# ---------------------------------------------------------------------------------------------
# pictures


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        fig.clear()
    path.write_bytes(buffer.getvalue())
    return path


def _bare(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "variant"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


def _display(image: Tensor) -> np.ndarray:
    """[H, W, 3] (or [H, W]) in [0, 1] for imshow; a normalised input is rescaled to its range."""
    pixels = image.detach().float().cpu().numpy()
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0.0 or high > 1.0:
        pixels = (pixels - low) / (high - low if high > low else 1.0)
    if pixels.shape[0] == 3:
        return np.ascontiguousarray(pixels.transpose(1, 2, 0))
    return pixels[0]


def _as_image(values: np.ndarray) -> np.ndarray:
    """A 2-D picture of one channel's activation: 2-D as is, 1-D as a strip, higher dimensions
    by their middle slice."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 0:
        return values.reshape(1, 1)
    if values.ndim == 1:
        return values.reshape(1, -1)
    while values.ndim > 2:
        values = values[values.shape[0] // 2]
    return values


def _limits(arrays: Sequence[np.ndarray], zero_floor: bool = False) -> tuple[float, float]:
    low = 0.0 if zero_floor else min(float(a.min()) for a in arrays)
    high = max(float(a.max()) for a in arrays)
    return (low, high) if high > low else (low, low + 1e-6)


def _percent(fraction: float) -> str:
    return f"{fraction:.0%}" if fraction >= 0.1 else f"{fraction:.1%}"


def _mask_picture(layer: str, name: str, weight: Tensor, why: str) -> Figure:
    keep = (weight != 0).cpu().numpy()
    out = keep.shape[0]
    conv = keep.ndim > 2
    fig = _figure(13.0 if conv else 7.0, 4.8)
    axes = fig.subplots(1, 3, width_ratios=[3, 2, 1]) if conv else [fig.subplots()]
    flat = keep.reshape(out, -1).astype(np.float32)
    image = axes[0].imshow(flat, cmap="gray_r", vmin=0, vmax=1, aspect="auto",
                           interpolation="nearest")  # fmt: skip
    bar = fig.colorbar(image, ax=axes[0], ticks=[0.0, 1.0], shrink=0.8)
    bar.ax.set_yticklabels(["pruned", "kept"])
    axes[0].set_ylabel("output channel")
    axes[0].set_xlabel("input × kernel, flattened" if conv else "input feature")
    axes[0].set_title("weight mask (dark = kept)", fontsize=9)
    if conv:
        per_kernel = keep.reshape(out, keep.shape[1], -1).mean(axis=-1)
        heat = axes[1].imshow(per_kernel, cmap="viridis", vmin=0, vmax=1, aspect="auto",
                              interpolation="nearest")  # fmt: skip
        fig.colorbar(heat, ax=axes[1], shrink=0.8, label="kept fraction of the kernel")
        cut = int((per_kernel == 0).sum())
        axes[1].set_title(f"kernels: {cut:,} of {per_kernel.size:,} fully cut", fontsize=9)
        axes[1].set_xlabel("input channel")
        axes[1].set_ylabel("output channel")
        kept = flat.mean(axis=1)
        axes[2].barh(np.arange(out), kept, color="tab:blue")
        axes[2].set_ylim(out - 0.5, -0.5)
        axes[2].set_xlim(0, max(1e-3, float(kept.max())) * 1.05)
        axes[2].set_xlabel("kept fraction")
        axes[2].set_title("per output channel", fontsize=9)
    density = float(keep.mean())
    fig.suptitle(
        f"{name}: layer {layer} ({why}), {int(keep.sum()):,} of {keep.size:,} weights kept "
        f"({_percent(density)}), shape {tuple(keep.shape)}",
        fontsize=10,
    )
    return fig


def _features_picture(
    layer: str,
    dense_out: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    kept: Mapping[str, np.ndarray],
    channels: np.ndarray,
    why: str,
) -> Figure:
    names = list(outputs)
    rows = 1 + 2 * len(names)
    cols = len(channels)
    fig = _figure(1.9 * cols + 2.2, 1.75 * rows + 0.8)
    grid = np.asarray(fig.subplots(rows, cols, squeeze=False))
    shared = _limits([dense_out[c] for c in channels]
                     + [outputs[n][c] for n in names for c in channels])  # fmt: skip
    diffs = {n: np.abs(dense_out - outputs[n]) for n in names}
    diff_limits = _limits([diffs[n][c] for n in names for c in channels], zero_floor=True)
    plan: list[tuple[str, np.ndarray, tuple[float, float], str, np.ndarray | None]] = [
        ("dense", dense_out, shared, "viridis", None)
    ]
    plan += [(n, outputs[n], shared, "viridis", kept[n]) for n in names]
    plan += [(f"|dense − {n}|", diffs[n], diff_limits, "magma", kept[n]) for n in names]
    for r, (label, maps, limits, cmap, fraction) in enumerate(plan):
        image = None
        for c, channel in enumerate(channels):
            ax = grid[r, c]
            _bare(ax)
            ax.set_label(f"{label}:{int(channel)}")
            image = ax.imshow(_as_image(maps[channel]), cmap=cmap, vmin=limits[0],
                              vmax=limits[1], interpolation="nearest")  # fmt: skip
            title = f"ch {int(channel)}"
            if fraction is not None:
                title += f", kept {_percent(float(fraction[channel]))}"
            ax.set_title(title, fontsize=7)
        grid[r, 0].set_ylabel(label, fontsize=8)
        if image is not None:
            fig.colorbar(image, ax=list(grid[r, :]), shrink=0.8)
    fig.suptitle(
        f"layer {layer} ({why}): output feature maps, dense vs each variant, for the output "
        f"channels {names[0]} cut most",
        fontsize=10,
    )
    return fig


def _overlay(rgb: np.ndarray, changed: np.ndarray) -> np.ndarray:
    base = rgb if rgb.ndim == 3 else np.repeat(rgb[..., None], 3, axis=2)
    weight = 0.65 * changed[..., None].astype(np.float32)
    return np.clip(base * (1.0 - weight) + _CHANGED * weight, 0.0, 1.0)


def _outline(ax: Axes, changed: np.ndarray) -> None:
    if changed.any() and not changed.all():
        ax.contour(changed.astype(np.float32), levels=[0.5], colors="red", linewidths=0.9)


def _upsampled(maps: Tensor, size: tuple[int, int]) -> np.ndarray:
    """[C, h, w] activations at the image's size (nearest), as numpy."""
    if maps.dim() != 3:
        return maps.numpy()
    resized = torch.nn.functional.interpolate(maps[None], size=size, mode="nearest")[0]
    return resized.numpy()


def _boundary_picture(
    layer: str,
    name: str,
    image: Tensor,
    dense_pred: np.ndarray,
    pred: np.ndarray,
    classes: int,
    kept: np.ndarray,
    dense_out: Tensor,
    out: Tensor,
    why: str,
) -> Figure:
    changed = dense_pred != pred
    size = (int(changed.shape[0]), int(changed.shape[1]))
    spatial = dense_out.dim() == 3
    dense_maps = _upsampled(dense_out, size)
    maps = _upsampled(out, size)
    picks = np.argsort(kept, kind="stable")[:_BOUNDARY_CHANNELS]
    cols = max(4, len(picks))
    fig = _figure(2.9 * cols, 11.5)
    grid = fig.add_gridspec(4, cols, height_ratios=[1.0, 0.7, 1.0, 1.0])
    rgb = _display(image)
    top = [fig.add_subplot(grid[0, i]) for i in range(4)]
    top[0].imshow(rgb, cmap=None if rgb.ndim == 3 else "gray")
    top[0].set_title("input", fontsize=9)
    for ax, values, title in ((top[1], dense_pred, "dense prediction"),
                              (top[2], pred, f"{name} prediction")):  # fmt: skip
        ax.imshow(values, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    top[3].imshow(_overlay(rgb, changed))
    top[3].set_title(
        f"class changed: {int(changed.sum()):,} px ({_percent(float(changed.mean()))})",
        fontsize=9,
    )
    for ax, label in zip(top, ("input", "dense_pred", "pred", "changed"), strict=True):
        _bare(ax)
        ax.set_label(label)
    bars = fig.add_subplot(grid[1, :])
    bars.set_label("kept")
    colours = ["tab:red" if c in set(picks.tolist()) else "tab:blue" for c in range(len(kept))]
    bars.bar(np.arange(len(kept)), kept, color=colours)
    bars.set_xlim(-0.6, len(kept) - 0.4)
    bars.set_ylim(0, max(1e-3, float(kept.max())) * 1.1)
    bars.set_xlabel(f"output channel of {layer}")
    bars.set_ylabel("kept fraction")
    bars.set_title(f"weights kept per output channel in {name} (red: drawn below, cut most)",
                   fontsize=9)  # fmt: skip
    for row, (label, source) in enumerate((("dense", dense_maps), (name, maps)), start=2):
        limits = _limits([dense_maps[c] for c in picks] + [maps[c] for c in picks])
        image_ = None
        for col, channel in enumerate(picks):
            ax = fig.add_subplot(grid[row, col])
            _bare(ax)
            ax.set_label(f"{'dense' if row == 2 else 'variant'}:{int(channel)}")
            image_ = ax.imshow(_as_image(source[channel]), cmap="viridis", vmin=limits[0],
                               vmax=limits[1], interpolation="nearest")  # fmt: skip
            if spatial:
                _outline(ax, changed)
            if spatial and changed.any():
                at = float(np.abs(source[channel][changed]).mean())
                detail = f"mean |act| at changed px {at:.3g}"
            else:
                detail = "no pixel changed" if spatial else "not spatial"
            ax.set_title(f"{label} ch {int(channel)} (kept {_percent(float(kept[channel]))})\n"
                         f"{detail}", fontsize=7)  # fmt: skip
        if image_ is not None:
            fig.colorbar(image_, ax=fig.axes[-len(picks) :], shrink=0.8)
    fig.suptitle(
        f"{name} vs dense, layer {layer} ({why}):\nthe channels that lost most weights, over "
        f"the activations where the predicted class changed (red outline); {classes} classes",
        fontsize=10,
    )
    return fig


def write_diagnosis(
    dense: nn.Module,
    variants: Mapping[str, nn.Module],
    image: Tensor,
    out_dir: Path,
    layer: str | None = None,
) -> list[Path]:
    """Write the diagnosis PNGs (see the module docstring) of ``image`` ([C, H, W] or
    [1, C, H, W], as the models take it) into ``out_dir`` (created); returns their paths:
    ``mask-<variant>.png`` for each variant, ``features.png``, then ``boundary-<variant>.png``
    for each variant when the models output segmentation logits.

    ``variants``: name -> a sparse copy of ``dense`` (same module names and weight shapes).
    ``layer``: the qualified name of a Conv / Linear module (``enc.1.0``; a trailing
    ``.weight`` is accepted) to draw instead of the one ``choose_layer`` picks. The models
    run in eval mode without gradients; their training flags are restored.
    """
    _check_variants(variants)
    batch = _batch(image)
    if layer is None:
        layer, why = _choose(dense, variants)
    else:
        layer = layer.removesuffix(".weight")
        found = _shared(dense, variants)
        if layer not in found:
            names = list(found)
            shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8
                                            else "")  # fmt: skip
            raise ValueError(
                f"layer {layer!r} is not a Conv or Linear module with one weight shape in the "
                f"dense model and every variant; valid names: {shown or '(none)'}"
            )
        why = "named"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    slugs = {name: _slug(name, taken) for name in variants}
    dense_module = weighted_modules(dense)[layer]
    dense_output, dense_maps = _run(dense, batch, dense_module)
    assert dense_maps is not None
    dense_logits = _logits(dense_output)
    written: list[Path] = []
    kept: dict[str, np.ndarray] = {}
    maps: dict[str, Tensor] = {}
    logits: dict[str, Tensor | None] = {}
    for name, model in variants.items():
        module = weighted_modules(model)[layer]
        weight = _weight(module)
        kept[name] = channel_kept(weight).numpy()
        output, captured = _run(model, batch, module)
        assert captured is not None
        maps[name] = captured
        logits[name] = _logits(output)
        written.append(
            _save(_mask_picture(layer, name, weight, why), out / f"mask-{slugs[name]}.png")
        )
    first = next(iter(variants))
    channels = np.argsort(kept[first], kind="stable")[:MAX_CHANNELS]
    features = _features_picture(layer, dense_maps.numpy(),
                                 {n: m.numpy() for n, m in maps.items()}, kept, channels, why)  # fmt: skip
    written.append(_save(features, out / "features.png"))
    if dense_logits is None:
        return written
    dense_pred = dense_logits[0].argmax(0).cpu().numpy()
    for name in variants:
        variant_logits = logits[name]
        if variant_logits is None or variant_logits.shape != dense_logits.shape:
            continue
        pred = variant_logits[0].argmax(0).cpu().numpy()
        fig = _boundary_picture(layer, name, batch[0], dense_pred, pred,
                                int(dense_logits.shape[1]), kept[name], dense_maps, maps[name],
                                why)  # fmt: skip
        written.append(_save(fig, out / f"boundary-{slugs[name]}.png"))
    return written
