"""Mask pictures and sparsity facts for unstructured and N:M sparse models, for the report.

The diagnosis this serves: a model pruned hard in one shot (say 95% of its weights) loses
accuracy, and one wants to see *where*: which kernels and channels were cut, over which
activations, and where the output changed. So:

* ``layer_sparsity`` / ``sparsity_of_arrays``: per layer, the density (fraction of weights that
  are not exactly zero) and the pattern: ``"dense"``, ``"N:M"`` (e.g. ``"2:4"``, what sparse
  tensor cores run) or ``"unstructured"``;
* ``mask_image``: a layer's weight mask as an image (kept = dark, pruned = white), and for
  convolutions the kept fraction of every (output, input) kernel;
* ``mask_overlay``: one input through the dense and the sparse model: the feature maps the
  layer reads, with how much of the weights reading each channel survived, and the layer's
  outputs in both models and their difference;
* ``mcu_mask_overlay``: the same for the microcontroller MLP of ``prunekit mcu``, from its
  ``weights.safetensors``: which input pixels the first layer still reads;
* ``figure_png``: a figure as PNG bytes (the report embeds them as data URIs).

Figures are ``matplotlib.figure.Figure`` objects made without pyplot (nothing to leak when a
caller forgets to close one); matplotlib is imported only when a picture is drawn.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.sparsity.diagnose import weighted_modules

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DENSE_BELOW",
    "NM_GROUP_SIZES",
    "figure_png",
    "layer_sparsity",
    "mask_image",
    "mask_overlay",
    "mcu_mask_overlay",
    "nm_pattern",
    "sparsity_of_arrays",
]

# a layer with fewer exact zeros than this fraction is "dense" (quantisation and ReLU-dead
# weights leave a few zeros in any trained layer)
DENSE_BELOW = 0.01
# the group sizes M an N:M pattern is looked for in, in order of preference
NM_GROUP_SIZES = (4, 8)
# An N:M pattern is reported only when it cannot be chance: either the groups are mostly full
# (density >= _NM_FILL * N/M, what ``nm_mask`` gives), or unstructured zeros of the same density
# placed at random would break the pattern in at least _NM_EXPECTED_BREAKS groups (so seeing
# none is no accident: N:M pruning followed by more unstructured pruning). Otherwise a 95%
# unstructured layer would often "fit" 4:8, and a small 75% one 2:4.
_NM_FILL = 0.75
_NM_EXPECTED_BREAKS = 3.0
_BIG_IMAGE = 600  # pixels along a side above which images are drawn antialiased, not nearest
# masks with more rows / columns than this are drawn as the kept fraction of blocks (a VGG fc6
# mask has 100M entries: matplotlib would need gigabytes, and a page shows ~1000 pixels anyway)
_MAX_ROWS, _MAX_COLS = 1024, 2048


# ---------------------------------------------------------------------------------------------
# sparsity facts


def _kept(weight: Tensor | np.ndarray) -> np.ndarray:
    """Bool array, True where ``weight`` is not exactly zero (a kept weight)."""
    if isinstance(weight, Tensor):
        return (weight.detach() != 0).cpu().numpy()
    return np.asarray(weight) != 0


def _breaks_expected(groups: int, m: int, n: int, density: float) -> float:
    """Expected number of groups of ``m`` with more than ``n`` non-zeros if the same number of
    non-zeros were placed at random (binomial with p = density)."""
    tail = sum(
        math.comb(m, k) * density**k * (1.0 - density) ** (m - k) for k in range(n + 1, m + 1)
    )
    return groups * tail


def _layouts(keep: np.ndarray) -> list[np.ndarray]:
    """Rows along which N:M groups run: the flattened inputs (in*kh*kw) of each output row, and
    for convolutions also the input channels at each kernel position (``nm_mask(w, n, m, dim=1)``,
    what ``prunekit.sparsity`` makes)."""
    rows = [keep.reshape(keep.shape[0], -1)]
    if keep.ndim > 2:
        rows.append(np.moveaxis(keep, 1, -1).reshape(-1, keep.shape[1]))
    return rows


def nm_pattern(keep: np.ndarray) -> tuple[int, int] | None:
    """The N:M pattern a bool mask ``[out, in, *kernel]`` (True = kept) follows, or None.

    Groups are ``M`` consecutive weights along the input dimension (see ``_layouts``), M in
    ``NM_GROUP_SIZES``; N is the largest count of kept weights in any group. Among the patterns
    that hold with N/M <= 1/2 the sparsest is returned (2:4 before 4:8), provided it is not
    chance (see ``_NM_FILL``).
    """
    keep = np.asarray(keep, dtype=bool)
    if keep.ndim < 2 or keep.size == 0:
        return None
    density = float(keep.mean())
    if density == 0.0:
        return None
    best: tuple[int, int] | None = None
    for m in NM_GROUP_SIZES:
        for rows in _layouts(keep):
            if rows.shape[1] % m:
                continue
            counts = rows.reshape(rows.shape[0], -1, m).sum(axis=-1, dtype=np.int8)
            n = int(counts.max())
            if 2 * n > m:
                continue
            plausible = density >= _NM_FILL * n / m or (
                _breaks_expected(counts.size, m, n, density) >= _NM_EXPECTED_BREAKS
            )
            if plausible and (best is None or n / m < best[0] / best[1]):
                best = (n, m)
    return best


def _pattern(keep: np.ndarray) -> str:
    if keep.size == 0 or 1.0 - float(keep.mean()) < DENSE_BELOW:
        return "dense"
    found = nm_pattern(keep)
    return f"{found[0]}:{found[1]}" if found else "unstructured"


def _facts(name: str, keep: np.ndarray) -> dict[str, Any]:
    params = int(keep.size)
    nonzero = int(keep.sum())
    return {
        "name": name,
        "shape": [int(s) for s in keep.shape],
        "density": nonzero / params if params else 1.0,
        "zeros": params - nonzero,
        "params": params,
        "pattern": _pattern(keep),
    }


def layer_sparsity(model: nn.Module, *, min_sparsity: float = 0.0) -> list[dict[str, Any]]:
    """Sparsity facts of every Conv1d/2d/3d and Linear weight of ``model``, in module order.

    Each entry: ``name`` (the module's qualified name, as ``mask_overlay`` takes it), ``shape``,
    ``density`` (fraction of weights not exactly zero), ``zeros``, ``params`` and ``pattern``
    (``"dense"``: under 1% zeros; ``"N:M"`` such as ``"2:4"``, see ``nm_pattern``; else
    ``"unstructured"``). With ``min_sparsity > 0`` only layers at least that sparse
    (``1 - density >= min_sparsity``) are listed.
    """
    if isinstance(min_sparsity, bool) or not 0.0 <= float(min_sparsity) <= 1.0:
        raise ValueError(f"min_sparsity must be a number in [0, 1], got {min_sparsity!r}")
    facts = [
        _facts(name, _kept(_weight(module))) for name, module in weighted_modules(model).items()
    ]
    return [f for f in facts if min_sparsity <= 0 or 1.0 - f["density"] >= min_sparsity]


def _natural(name: str) -> list[Any]:
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)
    ]


def sparsity_of_arrays(weights: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """``layer_sparsity``'s facts from raw weight arrays (int8 or float, ``[out, in, ...]``),
    e.g. ``safetensors.numpy.load_file("weights.safetensors")`` of ``prunekit mcu``.

    Arrays with fewer than 2 dimensions (scales, biases, the sample) are skipped; names lose a
    trailing ``.weight`` (``layers.0.weight`` -> ``layers.0``) and come in natural order
    (``layers.2`` before ``layers.10``).
    """
    facts = []
    for key in sorted(weights, key=_natural):
        array = np.asarray(weights[key])
        if array.ndim < 2:
            continue
        name = key[: -len(".weight")] if key.endswith(".weight") else key
        facts.append(_facts(name, array != 0))
    return facts


# ---------------------------------------------------------------------------------------------
# pictures


def _new_figure(width: float, height: float) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _interpolation(image: np.ndarray) -> str:
    return "antialiased" if max(image.shape) > _BIG_IMAGE else "nearest"


def _blocks(values: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """A 2-D bool mask (1 = kept) or fraction map as float32, or, when larger than
    ``_MAX_ROWS`` x ``_MAX_COLS``, the mean of each block of ``(r, c)`` entries (for a mask:
    the kept fraction); returns the picture and ``(r, c)`` (``(1, 1)``: the values themselves)."""
    rows, cols = values.shape
    r, c = -(-rows // _MAX_ROWS), -(-cols // _MAX_COLS)
    if r == 1 and c == 1:
        return values.astype(np.float32), (1, 1)
    row_starts, col_starts = np.arange(0, rows, r), np.arange(0, cols, c)
    counts = values.dtype == bool
    numbers = values.view(np.uint8) if counts else values
    dtype = np.int32 if counts else np.float64
    sums = np.add.reduceat(numbers, row_starts, axis=0, dtype=dtype)
    sums = np.add.reduceat(sums, col_starts, axis=1, dtype=dtype)
    heights = np.diff(np.append(row_starts, rows))
    widths = np.diff(np.append(col_starts, cols))
    return (sums / np.outer(heights, widths)).astype(np.float32), (r, c)


def _show_mask(ax: Axes, keep: np.ndarray, cmap: str = "gray_r") -> Any:
    """Draw a 2-D mask (or a fraction map) with its real indices on the axes; returns the image."""
    picture, block = _blocks(keep)
    rows, cols = keep.shape
    image = ax.imshow(
        picture,
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        aspect="auto",
        interpolation=_interpolation(picture),
        extent=(-0.5, cols - 0.5, rows - 0.5, -0.5),
    )
    if block != (1, 1):
        ax.text(
            0.99,
            0.01,
            f"each pixel: the mean of {block[0]}×{block[1]} entries",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            bbox={"facecolor": "white", "alpha": 0.8, "lw": 0},
        )
    return image


def _is_square(n: int) -> int:
    """The side of ``n`` if it is a perfect square above 1, else 0."""
    side = math.isqrt(n)
    return side if n > 1 and side * side == n else 0


def _as_image(values: np.ndarray) -> np.ndarray:
    """A 2-D picture of an activation: 1-D -> a square if it is one (64 -> 8x8), else a 1xL strip;
    2-D as is; higher -> the middle slice along the leading dimensions."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 0:
        return values.reshape(1, 1)
    if values.ndim == 1:
        side = _is_square(values.size)
        return values.reshape(side, side) if side else values.reshape(1, -1)
    while values.ndim > 2:
        values = values[values.shape[0] // 2]
    return values


def _bare(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def mask_image(weight: Tensor | np.ndarray, title: str) -> Figure:
    """A layer's weight mask as an image: rows are output channels (neurons), columns the
    flattened inputs (``in*kh*kw``), kept weights dark, pruned ones white; ``fig.axes[0]``'s
    image data is the mask as 0/1 floats (1 = kept). A mask over 1024 rows or 2048 columns is
    drawn as the kept fraction of equal blocks (the panel says how big), which is also what
    the eye would average on a page.

    For a convolution (a weight with more than 2 dimensions) a second panel shows, per
    (output, input) kernel, the fraction of its weights kept: a cut kernel is a 0, a cut
    channel a whole 0 row or column.
    """
    keep = _kept(weight)
    if keep.ndim < 2:
        raise ValueError(
            f"mask_image needs a weight with at least 2 dimensions ([out, in, ...]), "
            f"got shape {tuple(keep.shape)}"
        )
    out = keep.shape[0]
    conv = keep.ndim > 2
    fig = _new_figure(11.0 if conv else 6.5, 4.5)
    axes = fig.subplots(1, 2, width_ratios=[3, 2]) if conv else [fig.subplots()]
    ax = axes[0]
    image = _show_mask(ax, keep.reshape(out, -1))
    bar = fig.colorbar(image, ax=ax, ticks=[0.0, 1.0], shrink=0.8)
    bar.ax.set_yticklabels(["pruned", "kept"])
    if conv:
        kernel = "×".join(str(s) for s in keep.shape[2:])
        ax.set_xlabel(f"input (in × kernel {kernel}, flattened)")
        ax.set_ylabel("output channel")
    else:
        ax.set_xlabel("input feature")
        ax.set_ylabel("output neuron")
    ax.set_title("weight mask (dark = kept)")
    if conv:
        per_kernel = keep.reshape(out, keep.shape[1], -1).mean(axis=-1, dtype=np.float32)
        cut = int((per_kernel == 0).sum())
        heat = _show_mask(axes[1], per_kernel, cmap="viridis")
        fig.colorbar(heat, ax=axes[1], shrink=0.8, label="kept fraction of the kernel")
        axes[1].set_xlabel("input channel")
        axes[1].set_ylabel("output channel")
        if cut > 0 and per_kernel.size <= 64 * 64:
            rows, cols = np.nonzero(per_kernel == 0)
            axes[1].scatter(cols, rows, marker="x", color="red", s=12, linewidths=0.8)
        axes[1].set_title(f"kernels: {cut:,} of {per_kernel.size:,} fully cut (✕)")
    kept = int(keep.sum())
    fig.suptitle(
        f"{title}: density {100 * kept / keep.size:.1f}%\n"
        f"{kept:,} of {keep.size:,} weights kept, shape {tuple(keep.shape)}",
        fontsize=10,
    )
    return fig


def _module(model: nn.Module, layer: str, which: str) -> nn.Module:
    modules = weighted_modules(model)
    if layer not in modules:
        names = list(modules)
        shown = ", ".join(repr(n) for n in names[:8]) + (
            f", ... ({len(names) - 8} more)" if len(names) > 8 else ""
        )
        raise ValueError(
            f"{layer!r} is not a Conv or Linear module of the {which} model; "
            f"valid names: {shown or '(none)'}"
        )
    return modules[layer]


def _weight(module: nn.Module) -> Tensor:
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight


def _capture(model: nn.Module, module: nn.Module, example: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``model`` on ``example`` (eval mode, no grad) and return ``module``'s first input and
    its output for the first sample, as float32 on the CPU."""
    seen: dict[str, Tensor] = {}

    def hook(_: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        seen.setdefault("input", inputs[0].detach()[0].float().cpu())
        seen.setdefault("output", output.detach()[0].float().cpu())

    param = next(model.parameters(), None)
    device = param.device if param is not None else example.device
    modes = {m: m.training for m in model.modules()}
    handle = module.register_forward_hook(hook)
    try:
        model.eval()
        with torch.no_grad():
            model(example.to(device))
    finally:
        handle.remove()
        for m, training in modes.items():
            m.train(training)
    if "output" not in seen:
        raise ValueError("the layer was not called when the model ran on the example")
    return seen["input"], seen["output"]


def _input_kept(keep: np.ndarray, in_channels: int) -> np.ndarray:
    """Per input channel, the fraction of the weights reading it that were kept (grouped
    convolutions: only the weights of its group read it)."""
    groups = in_channels // keep.shape[1]
    per_group = keep.reshape(groups, keep.shape[0] // groups, keep.shape[1], -1)
    return per_group.mean(axis=(1, 3)).reshape(-1)


def _limits(arrays: Sequence[np.ndarray], zero_floor: bool = False) -> tuple[float, float]:
    lo = 0.0 if zero_floor else min(float(a.min()) for a in arrays)
    hi = max(float(a.max()) for a in arrays)
    if hi <= lo:
        hi = lo + 1e-12 if zero_floor else lo + 1.0
    return lo, hi


def _percent(fraction: float) -> str:
    """12%, but 4.3% and 0.2% below 10% (heavy pruning is the interesting case)."""
    return f"{fraction:.0%}" if fraction >= 0.1 else f"{fraction:.1%}"


def _labelled(ax: Axes, text: str) -> None:
    ax.text(
        0.03,
        0.97,
        text,
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=7,
        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.8, "lw": 0},
    )


def mask_overlay(
    dense: nn.Module, sparse: nn.Module, layer: str, example: Tensor, *, max_maps: int = 8
) -> Figure:
    """One input through ``dense`` and ``sparse``: what ``layer`` reads and what it produces.

    ``example`` is a batch (its first sample is drawn), ``layer`` the qualified name of a Conv or
    Linear module present in both models with the same weight shape. Both models run in eval
    mode without gradients (their training flags are restored); forward hooks capture the
    layer's input and output.

    Convolutions: one column per channel, up to ``max_maps``; the rows are the input feature
    maps (the input channels whose weights were cut most first, each labelled with the kept
    fraction of the weights reading it), then the output maps of the dense model, of the sparse
    model, and |dense − sparse|, for the output channels that lost most weights first. Dense and
    sparse outputs share one colour scale, inputs and differences one each. Axes carry labels
    (``ax.get_label()``) ``input:<c>``, ``dense:<o>``, ``sparse:<o>``, ``diff:<o>``.

    Linear layers: the input (a square flat input such as 64 features drawn 8×8, else a strip;
    inputs no output neuron reads any more are crossed out), the kept fraction per input
    feature and per output neuron, then the dense and sparse outputs and |dense − sparse|;
    labels ``input``, ``input_kept``, ``output_kept``, ``dense``, ``sparse``, ``diff``.
    """
    if not isinstance(example, Tensor):
        raise TypeError(
            f"example must be a tensor (a batch of inputs), got {type(example).__name__}"
        )
    if isinstance(max_maps, bool) or not isinstance(max_maps, int) or max_maps < 1:
        raise ValueError(f"max_maps must be a positive integer, got {max_maps!r}")
    dense_module = _module(dense, layer, "dense")
    sparse_module = _module(sparse, layer, "sparse")
    weight = _weight(sparse_module)
    if _weight(dense_module).shape != weight.shape:
        raise ValueError(
            f"{layer!r} has weight shape {tuple(_weight(dense_module).shape)} in the dense model "
            f"and {tuple(weight.shape)} in the sparse one; mask_overlay compares same-shaped "
            "(unstructured or N:M) layers"
        )
    _, dense_out = _capture(dense, dense_module, example)
    sparse_in, sparse_out = _capture(sparse, sparse_module, example)
    keep = _kept(weight)
    d_out, s_out = dense_out.numpy(), sparse_out.numpy()
    diff = np.abs(d_out - s_out)
    density = float(keep.mean())
    scale = float(np.abs(d_out).mean())
    relative = f", {float(diff.mean()) / scale:.1%} of the mean |dense output|" if scale else ""
    kind = type(sparse_module).__name__
    title = (
        f"{layer} ({kind}): {density:.1%} of weights kept; one input's output changed by "
        f"up to {float(diff.max()):.3g} (mean |Δ| {float(diff.mean()):.3g}{relative})"
    )
    if isinstance(sparse_module, nn.Linear):
        fig = _linear_overlay(keep, sparse_in.numpy(), d_out, s_out, diff)
    else:
        fig = _conv_overlay(keep, sparse_in.numpy(), d_out, s_out, diff, max_maps)
    fig.suptitle(title, fontsize=10)
    return fig


def _conv_overlay(
    keep: np.ndarray,
    inputs: np.ndarray,
    dense_out: np.ndarray,
    sparse_out: np.ndarray,
    diff: np.ndarray,
    max_maps: int,
) -> Figure:
    in_kept = _input_kept(keep, inputs.shape[0])
    out_kept = keep.reshape(keep.shape[0], -1).mean(axis=1)
    ins = np.argsort(in_kept, kind="stable")[:max_maps]
    outs = np.argsort(out_kept, kind="stable")[:max_maps]
    cols = max(len(ins), len(outs))
    fig = _new_figure(1.7 * cols + 2.0, 8.0)
    grid = np.asarray(fig.subplots(4, cols, squeeze=False))
    for ax in grid.flat:
        ax.set_axis_off()

    def row(
        r: int,
        picks: np.ndarray,
        maps: np.ndarray,
        name: str,
        limits: tuple[float, float],
        cmap: str,
        kept: np.ndarray,
        ylabel: str,
    ) -> None:
        image = None
        for col, channel in enumerate(picks):
            ax = grid[r, col]
            ax.set_axis_on()
            _bare(ax)
            ax.set_label(f"{name}:{int(channel)}")
            picture = _as_image(maps[channel])
            image = ax.imshow(
                picture,
                cmap=cmap,
                vmin=limits[0],
                vmax=limits[1],
                interpolation=_interpolation(picture),
            )
            ax.set_title(f"ch {int(channel)}", fontsize=8)
            _labelled(ax, f"kept {_percent(float(kept[channel]))}")
        grid[r, 0].set_ylabel(ylabel, fontsize=8)
        if image is not None:
            fig.colorbar(image, ax=list(grid[r, :]), shrink=0.8)

    row(
        0,
        ins,
        inputs,
        "input",
        _limits([inputs[c] for c in ins]),
        "gray",
        in_kept,
        "input maps\n(kept: weights\nreading it)",
    )
    shared = _limits([dense_out[c] for c in outs] + [sparse_out[c] for c in outs])
    row(
        1,
        outs,
        dense_out,
        "dense",
        shared,
        "viridis",
        out_kept,
        "dense output\n(kept: its weights)",
    )
    row(2, outs, sparse_out, "sparse", shared, "viridis", out_kept, "sparse output")
    row(
        3,
        outs,
        diff,
        "diff",
        _limits([diff[c] for c in outs], zero_floor=True),
        "magma",
        out_kept,
        "|dense − sparse|\n(where it changed)",
    )
    return fig


def _linear_overlay(
    keep: np.ndarray,
    inputs: np.ndarray,
    dense_out: np.ndarray,
    sparse_out: np.ndarray,
    diff: np.ndarray,
) -> Figure:
    fig = _new_figure(11.0, 7.0)
    axes = np.asarray(fig.subplots(2, 3, squeeze=False))
    in_kept = keep.mean(axis=0)
    out_kept = keep.mean(axis=1)

    def panel(
        ax: Axes,
        name: str,
        values: np.ndarray,
        title: str,
        cmap: str,
        limits: tuple[float, float],
        bar: str,
    ) -> None:
        picture = _as_image(values)
        _bare(ax)
        ax.set_label(name)
        image = ax.imshow(
            picture,
            cmap=cmap,
            vmin=limits[0],
            vmax=limits[1],
            aspect="auto" if picture.shape[0] == 1 else "equal",
            interpolation=_interpolation(picture),
        )
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8, label=bar)

    panel(
        axes[0, 0],
        "input",
        inputs,
        "input (the activations it reads)",
        "gray",
        _limits([inputs]),
        "activation",
    )
    if inputs.ndim == 1:
        cut = _as_image((in_kept == 0).astype(np.float32))
        rows, cols = np.nonzero(cut)
        axes[0, 0].scatter(cols, rows, marker="x", color="red", s=18, linewidths=1)
    _labelled(axes[0, 0], f"kept {_percent(float(in_kept.mean()))}; ✕ = read by no neuron")
    panel(
        axes[0, 1],
        "input_kept",
        in_kept,
        "kept fraction of the weights reading each input",
        "viridis",
        (0.0, 1.0),
        "kept fraction",
    )
    panel(
        axes[0, 2],
        "output_kept",
        out_kept,
        "kept fraction of each output neuron's weights",
        "viridis",
        (0.0, 1.0),
        "kept fraction",
    )
    shared = _limits([dense_out, sparse_out])
    panel(axes[1, 0], "dense", dense_out, "dense output", "viridis", shared, "output")
    panel(axes[1, 1], "sparse", sparse_out, "sparse output", "viridis", shared, "output")
    panel(
        axes[1, 2],
        "diff",
        diff,
        "|dense − sparse| (where it changed)",
        "magma",
        _limits([diff], zero_floor=True),
        "|Δ|",
    )
    return fig


_LAYER_KEY = re.compile(r"^layers\.(\d+)\.weight$")


def mcu_mask_overlay(
    weights: Mapping[str, np.ndarray],
    sample: np.ndarray,
    image_shape: tuple[int, int] | None = None,
) -> Figure:
    """The microcontroller MLP's masks over one input, from ``weights.safetensors`` of
    ``prunekit mcu`` (``layers.{i}.weight`` int8 ``[out, in]``, zeros = pruned).

    Top row: the input image (``sample``, e.g. the 64 features of a digit drawn 8×8; a square
    input is drawn square without ``image_shape``, anything else as a strip) and the same image
    overlaid with how many first-layer neurons still read each pixel (counts written on small
    images; ✕ = read by none). Bottom row: every layer's mask (kept = dark) side by side.
    A ``sample.label`` entry in ``weights`` is shown in the title. Axes labels: ``input``,
    ``readers``, ``mask:<i>``.
    """
    layers: dict[int, np.ndarray] = {}
    for key, value in weights.items():
        match = _LAYER_KEY.match(key)
        if match:
            layers[int(match.group(1))] = np.asarray(value)
    if not layers:
        raise ValueError(
            "no 'layers.{i}.weight' arrays in the weights (expected the contents of "
            "weights.safetensors written by prunekit mcu)"
        )
    masks = [layers[i] != 0 for i in sorted(layers)]
    if any(m.ndim != 2 for m in masks):
        raise ValueError("the MCU layer weights must be 2-D [out, in] arrays")
    pixels = np.asarray(sample, dtype=np.float32).reshape(-1)
    first = masks[0]
    if pixels.size != first.shape[1]:
        raise ValueError(
            f"the sample has {pixels.size} features, the first layer reads {first.shape[1]}"
        )
    if image_shape is None:
        side = _is_square(pixels.size)
        image_shape = (side, side) if side else (1, pixels.size)
    if image_shape[0] * image_shape[1] != pixels.size:
        raise ValueError(f"image_shape {image_shape} does not hold {pixels.size} features")
    picture = pixels.reshape(image_shape)
    readers = first.sum(axis=0).reshape(image_shape)
    neurons = first.shape[0]

    count = len(masks)
    cols = max(2, count)
    fig = _new_figure(max(8.0, 3.2 * cols), 7.5)
    grid = fig.add_gridspec(2, cols)
    top = [fig.add_subplot(grid[0, : cols // 2]), fig.add_subplot(grid[0, cols // 2 :])]
    aspect: Literal["auto", "equal"] = "auto" if image_shape[0] == 1 else "equal"
    top[0].set_label("input")
    image = top[0].imshow(picture, cmap="gray", aspect=aspect, interpolation="nearest")
    fig.colorbar(image, ax=top[0], shrink=0.8, label="input value")
    top[0].set_title("input")
    top[1].set_label("readers")
    top[1].imshow(picture, cmap="gray", aspect=aspect, interpolation="nearest")
    heat = top[1].imshow(
        readers,
        cmap="plasma",
        alpha=0.6,
        vmin=0,
        vmax=max(1, int(readers.max())),
        aspect=aspect,
        interpolation="nearest",
    )
    fig.colorbar(
        heat, ax=top[1], shrink=0.8, label=f"first-layer neurons reading it (of {neurons})"
    )
    cut_rows, cut_cols = np.nonzero(readers == 0)
    top[1].scatter(cut_cols, cut_rows, marker="x", color="red", s=30, linewidths=1.2)
    if readers.size <= 256:
        for (r, c), n in np.ndenumerate(readers):
            if n == 0:
                continue  # crossed out
            top[1].text(c, r, str(int(n)), ha="center", va="center", fontsize=6, color="white")
    top[1].set_title(f"kept connections per input ({int((readers == 0).sum())} pixels unread)")
    for ax in top:
        _bare(ax)
    for i, mask in enumerate(masks):
        ax = fig.add_subplot(grid[1, i])
        ax.set_label(f"mask:{i}")
        _show_mask(ax, mask)
        ax.set_title(
            f"layer {i}: {mask.shape[0]}×{mask.shape[1]}, density {100 * float(mask.mean()):.1f}%",
            fontsize=9,
        )
        ax.set_xlabel("input")
        ax.set_ylabel("output neuron")
    label = weights.get("sample.label")
    shown = f" (label {int(np.asarray(label).reshape(-1)[0])})" if label is not None else ""
    total = sum(int(m.sum()) for m in masks)
    params = sum(int(m.size) for m in masks)
    fig.suptitle(
        f"MCU model: {total:,} of {params:,} weights kept ({100 * total / params:.1f}%), "
        f"over one test input{shown}"
    )
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """``fig`` as PNG bytes; the figure is closed (its memory released) afterwards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
        fig.clear()
    return buffer.getvalue()
