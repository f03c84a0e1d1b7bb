"""Fit an MLP into a flash budget: plan a sparsity, prune gradually, share weights, quantise,
choose the storage, and keep the most accurate candidate that fits.

The method (``method="prunekit"``):

1. **Plan.** For each value encoding (plain int8, or ``bits``-bit shared values) bisect the
   global density whose magnitude masks on the dense weights, stored in their best format,
   fit the budget (exact bytes from ``storage.best_encoding`` on the mask pattern). A global
   magnitude threshold sets each layer's sparsity: layers with larger weights (the small
   classifier) keep more.
2. **Prune gradually** to that density on the cubic schedule of Zhu & Gupta (2017) while
   training with distillation from the dense model, then fine-tune with the masks fixed.
   Training images are shifted by up to ``Recipe.shift_pixels`` and the teacher labels the
   shifted image (function matching, Beyer et al. 2022).
3. **Shrink**: hidden neurons left without inputs or outputs are cut (``shrink.py``).
4. **Share weights** (Deep Compression) and fine-tune the shared values; quantise to int8
   with the sharing's per-row scales, so the codebook is exact.
5. **Measure** the exact bytes; if the budget is missed (masks drift during training), prune
   the smallest remaining weights and re-measure.

Candidates are compared by integer-inference accuracy on the validation split; the test split
is only reported. ``method="plain"`` is the textbook baseline every toolkit offers: global
gradual magnitude pruning with fine-tuning, int8 values with relative indices (the index width
chosen per layer; a fixed 4-bit index cannot go below ~22 KB on a 784x300 layer because of its
filler entries), no distillation, no weight sharing, no shrinking.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from prunekit.errors import DeploymentError
from prunekit.mcu import storage
from prunekit.mcu.budget import format_bytes
from prunekit.mcu.datasets import Splits
from prunekit.mcu.qmodel import QuantizedMLP, integer_predict
from prunekit.mcu.quantize import quantize_mlp
from prunekit.mcu.sharing import WeightSharing, kmeans_1d, linear_layers
from prunekit.mcu.shrink import remove_dead_neurons
from prunekit.mcu.train import TrainConfig, accuracy, fit
from prunekit.sparsity import CubicSchedule, GradualPruner, MaskSet, magnitude_masks

Log = Callable[[str], None]
PLAIN_FORMATS = ("relative",)
PROMISING_SHARE = 0.5


@dataclass(frozen=True)
class Recipe:
    """How long and how hard each training phase runs."""

    dense_epochs: int = 30
    prune_epochs: int = 60  # the cubic schedule ends two thirds of the way through
    finetune_epochs: int = 30
    sharing_epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 128
    distill_weight: float = 0.7
    # Pixels of random translation while compressing (``TrainConfig.shift_pixels``); the dense
    # model is trained as the user's recipe says, without it. Shifts together with a milder
    # distillation temperature (2 instead of 4) raised the 60x Fashion-MNIST model's
    # validation accuracy for two dense seeds (89.14 -> 89.40%, 89.20 -> 89.62%); either
    # change alone did not (shifts of 2 pixels, or T=2 without shifts: no gain).
    distill_temperature: float = 2.0
    shift_pixels: int = 1
    patience: int = 5
    calibration_samples: int = 2000
    # Weight score = |w| * (importance of the two neurons it connects) ** neuron_exponent.
    # 0 is plain magnitude; above 0, pruning concentrates in fewer neurons, which then die and
    # are cut: fewer rows cost less bias/multiplier storage and shorter index gaps.
    neuron_exponent: float = 0.5
    # Shared values scaled per output row instead of per layer: more freedom per neuron, but
    # every row then stores its own multiplier and shift (5 bytes).
    per_row_sharing_scale: bool = False
    seed: int = 0

    @classmethod
    def quick(cls) -> Recipe:
        """Short phases for tiny datasets and tests. No shifts: a pixel is an eighth of an 8x8
        digit, not a small translation."""
        return cls(dense_epochs=60, prune_epochs=40, finetune_epochs=30, sharing_epochs=10,
                   batch_size=32, patience=10, distill_temperature=4.0,
                   shift_pixels=0)  # fmt: skip


@dataclass
class Candidate:
    name: str
    value_bits: int  # 8 = plain int8 values, fewer = shared values
    model: nn.Sequential
    qmodel: QuantizedMLP
    encodings: list[storage.EncodedWeights]
    report: storage.StorageReport
    planned_density: float
    val_accuracy: float  # integer-only inference

    @property
    def bytes(self) -> int:
        return self.report.total

    @property
    def nonzeros(self) -> int:
        return sum(int(np.count_nonzero(layer.weight)) for layer in self.qmodel.layers)


@dataclass
class Compression:
    budget: int
    method: str
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def best(self) -> Candidate:
        return max(self.candidates, key=lambda c: (c.val_accuracy, -c.bytes))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    }


def neuron_scores(weights: dict[str, torch.Tensor], exponent: float) -> dict[str, torch.Tensor]:
    """Pruning scores of consecutive Linear weights (see ``Recipe.neuron_exponent``).

    A hidden neuron's importance is the geometric mean of its incoming and outgoing L1 norms,
    an input's importance its outgoing L1 norm; each normalised to mean 1 within its layer.
    """
    mats = [w.detach().abs() for w in weights.values()]
    if exponent == 0:
        return dict(zip(weights, mats, strict=True))
    scores = []
    for index, mat in enumerate(mats):
        row = mat.sum(1)
        if index + 1 < len(mats) and mats[index + 1].shape[1] == mat.shape[0]:
            row = (row * mats[index + 1].sum(0)).sqrt()
        else:
            row = torch.ones_like(row)  # the classifier's outputs are never removed
        col = mat.sum(0)
        row = row / row.mean().clamp(min=1e-12)
        col = col / col.mean().clamp(min=1e-12)
        scores.append(mat * row[:, None].pow(exponent) * col[None, :].pow(exponent))
    return dict(zip(weights, scores, strict=True))


def _without_dead_neurons(
    masks: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The masks and weights after ``remove_dead_neurons`` would cut hidden neurons (for byte
    planning)."""
    result, values = list(masks), list(weights)
    for index in range(len(result) - 1):
        dead = ~result[index].any(1) | ~result[index + 1].any(0)
        if bool(dead.all()):
            continue
        for layers in (result, values):
            layers[index] = layers[index][~dead]
            layers[index + 1] = layers[index + 1][:, ~dead]
    return result, values


def _planned_int8(mask: torch.Tensor, value_bits: int, weight: torch.Tensor) -> np.ndarray:
    """An int8 matrix with the mask's pattern whose values are distributed as the deployed ones
    will be: entropy-coded formats (``huffman``) pay by the value frequencies, not only by
    their number. Shared values: the 1-D k-means codes of the kept weights (as
    ``sharing.WeightSharing`` starts them); int8: per-row symmetric quantisation."""
    w = weight.detach().to(torch.float64).numpy()
    keep = mask.numpy()
    out = np.zeros(keep.shape, dtype=np.int8)
    kept = w[keep]
    if kept.size == 0:
        return out
    if value_bits < 8:
        centroids = kmeans_1d(kept, 2**value_bits - 1)
        codes = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, kept)
        out[keep] = (codes + 1).astype(np.int8)  # any distinct non-zero values per code
        return out
    row_max = np.abs(np.where(keep, w, 0)).max(axis=1, keepdims=True)
    q = np.rint(w / np.where(row_max > 0, row_max / 127, 1)).clip(-127, 127)
    q = np.where(q == 0, np.sign(w), q)  # a kept weight stays a stored non-zero
    out[keep] = q[keep].astype(np.int8)
    return out


def _formats(value_bits: int, method: str) -> tuple[str, ...]:
    if method == "plain":
        return PLAIN_FORMATS
    if value_bits < 8:
        return (*storage.CODEBOOK_FORMATS, *storage.ENTROPY_FORMATS)
    return (*storage.BASE_FORMATS, *storage.ENTROPY_FORMATS)


def _encode(weight: np.ndarray, value_bits: int, method: str) -> storage.EncodedWeights:
    return storage.best_encoding(weight, _formats(value_bits, method))


def _row_overhead(out: int, value_bits: int, per_row_scale: bool) -> int:
    """Bytes of a layer's biases, multipliers and shifts, at most (biases counted as int32):
    int8 weights have a scale per row; shared values one per layer unless ``per_row_scale``."""
    if value_bits < 8 and not per_row_scale:
        return out * storage.SHARED_SCALE_ROW_BYTES + storage.SHARED_SCALE_LAYER_BYTES
    return out * storage.ROW_BYTES


def _bytes_for_masks(
    masks: Sequence[torch.Tensor],
    value_bits: int,
    method: str,
    weights: Sequence[torch.Tensor],
    per_row_scale: bool = False,
) -> int:
    """Exact bytes of layers with these masks, the values planned from ``weights``."""
    total = 0
    for mask, values in zip(masks, weights, strict=True):
        weight = _planned_int8(mask, value_bits, values)
        overhead = _row_overhead(mask.shape[0], value_bits, per_row_scale)
        total += _encode(weight, value_bits, method).nbytes + overhead
    return total


def plan_density(
    dense: nn.Module,
    budget: int,
    value_bits: int,
    method: str,
    neuron_exponent: float = 0.0,
    per_row_scale: bool = False,
) -> float:
    """The largest global density whose masks on ``dense`` fit ``budget`` bytes (after dead
    neurons are cut, for prunekit's method)."""
    weights = {name: w.detach() for name, w in _weights(dense).items()}
    scores = neuron_scores(weights, neuron_exponent if method == "prunekit" else 0.0)

    def size(density: float) -> int:
        if density >= 1.0:
            masks = [torch.ones_like(w, dtype=torch.bool) for w in weights.values()]
        else:
            masks = list(magnitude_masks(weights, 1.0 - density, scores=scores).values())
        values = list(weights.values())
        if method == "prunekit":
            masks, values = _without_dead_neurons(masks, values)
        return _bytes_for_masks(masks, value_bits, method, values, per_row_scale)

    if size(1.0) <= budget:
        return 1.0
    total = sum(w.numel() for w in weights.values())
    # Bytes are not monotone in the density: with relative indexing a nearly empty matrix pays
    # for filler entries across all its zeros. So scan a geometric grid for the largest density
    # that fits, then refine between it and the next grid point.
    grid = np.geomspace(1.0 / total, 1.0, 64)
    sizes = [size(float(d)) for d in grid]
    fitting = [i for i, n in enumerate(sizes) if n <= budget]
    if not fitting:
        minimum = min(sizes)
        raise DeploymentError(
            f"the flash budget of {format_bytes(budget)} ({budget} bytes) cannot be met: the "
            f"smallest this model can be stored in is {minimum} bytes ({minimum - budget} over; "
            f"biases and requantisation parameters take up to {storage.ROW_BYTES} bytes per "
            f"neuron); use a "
            f"narrower architecture or a larger budget"
        )
    index = fitting[-1]
    low, high = float(grid[index]), float(grid[min(index + 1, len(grid) - 1)])
    for _ in range(12):
        if high / low < 1.002:
            break
        middle = math.sqrt(low * high)
        if size(middle) <= budget:
            low = middle
        else:
            high = middle
    return low


def check_budget_feasible(widths: Sequence[int], budget: int) -> None:
    """Fail before any training when no model of this shape can fit ``budget``.

    A necessary condition only (the exact answer needs trained weights): even with one neuron
    left per hidden layer, every output row stores a bias (an int8 at least), every layer a
    multiplier and a shift (shared by its rows at best) and at least one stored weight.
    """
    layers = len(widths) - 1
    rows = (len(widths) - 2) + widths[-1]
    minimum = rows + layers * (storage.SHARED_SCALE_LAYER_BYTES + 1)
    if budget < minimum:
        raise DeploymentError(
            f"the flash budget of {budget} bytes cannot be met: even with one neuron per hidden "
            f"layer the {widths[-1]} outputs and {len(widths) - 2} hidden neurons need a bias "
            f"each and every layer a multiplier, a shift and a weight, at least {minimum} bytes "
            f"in all ({minimum - budget} over)"
        )


def train_dense(
    widths: Sequence[int], data: Splits, recipe: Recipe, log: Log = lambda _: None
) -> nn.Sequential:
    from prunekit.mcu.arch import build_mlp

    model = build_mlp(list(widths), seed=recipe.seed)
    config = TrainConfig(epochs=recipe.dense_epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                         patience=recipe.patience, seed=recipe.seed)  # fmt: skip
    result = fit(model, data, config)
    log(f"dense {'-'.join(map(str, widths))}: validation accuracy {result.best_val_accuracy:.2%} "
        f"after {result.epochs_run} epochs")  # fmt: skip
    return model


def _calibration(data: Splits, recipe: Recipe) -> torch.Tensor:
    return data.train_x[: recipe.calibration_samples]


def integer_accuracy(qmodel: QuantizedMLP, x: torch.Tensor, y: torch.Tensor) -> float:
    predictions = integer_predict(qmodel, qmodel.quantize_input(x.numpy()))
    return float((predictions == y.numpy()).mean())


def _correct_to_budget(
    pruner: GradualPruner,
    exponent: float,
    model: nn.Module,
    data: Splits,
    dense: nn.Module,
    config: TrainConfig,
    budget: int,
    value_bits: int,
    method: str,
    per_row_scale: bool,
    log: Log,
) -> None:
    """The plan was made on the dense weights; training moves the masks (and which neurons
    die), so re-measure the bytes now and prune further, with one epoch of recovery each
    time, while they miss the budget. Cheaper than discovering it after quantisation, where
    weights can only be dropped without recovery."""
    target = budget * 0.995  # quantisation leaves the bytes as they are; keep a small margin
    weights = _weights(model)
    total = sum(w.numel() for w in weights.values())
    for _ in range(8):
        masks = list(pruner.masks.values())
        planned, current = masks, [w.detach() for w in weights.values()]
        if method == "prunekit":
            planned, current = _without_dead_neurons(masks, current)
        size = _bytes_for_masks(planned, value_bits, method, current, per_row_scale)
        if size <= target:
            return
        kept = sum(int(m.sum()) for m in masks)
        drop = max(1, math.ceil(kept * (size - target) / size * 1.1))
        log(f"  {size} bytes after pruning, {size - budget:+d} against the budget: pruning "
            f"{drop} more weights")  # fmt: skip
        scores = neuron_scores(weights, exponent)
        sparsity = min(0.999999, 1 - (kept - drop) / total)
        update = magnitude_masks(weights, sparsity, scores=scores)
        pruner.mask_set.update({n: m & pruner.masks[n] for n, m in update.items()})
        fit(model, data, replace(config, epochs=1, min_epochs=1), teacher=dense,
            after_step=[pruner.mask_set.apply])  # fmt: skip


def _prune(
    dense: nn.Sequential,
    data: Splits,
    density: float,
    recipe: Recipe,
    method: str,
    budget: int,
    value_bits: int,
    log: Log,
) -> tuple[nn.Sequential, MaskSet | None]:
    model = copy.deepcopy(dense)
    if density >= 1.0:
        return model, None
    steps_per_epoch = math.ceil(len(data.train_y) / recipe.batch_size)
    end = max(1, recipe.prune_epochs * steps_per_epoch * 2 // 3)
    schedule = CubicSchedule(0.0, 1.0 - density, 0, end, max(1, steps_per_epoch // 4))
    exponent = recipe.neuron_exponent if method == "prunekit" else 0.0
    pruner = GradualPruner(
        model,
        schedule,
        parameters=list(_weights(model)),
        score=lambda weights: neuron_scores(dict(weights), exponent),
    )
    distill = recipe.distill_weight if method == "prunekit" else 0.0
    shift = recipe.shift_pixels if method == "prunekit" else 0
    config = TrainConfig(epochs=recipe.prune_epochs, min_epochs=recipe.prune_epochs,
                         batch_size=recipe.batch_size, lr=recipe.lr, distill_weight=distill,
                         distill_temperature=recipe.distill_temperature, shift_pixels=shift,
                         seed=recipe.seed)  # fmt: skip
    # step() prunes on its schedule and keeps masks enforced after each optimizer step.
    fit(model, data, config, teacher=dense, after_step=[pruner.step, pruner.mask_set.apply])
    while pruner.step_count <= end:  # a schedule longer than the epochs still finishes
        pruner.step()
    _correct_to_budget(pruner, exponent, model, data, dense, config, budget, value_bits, method,
                       recipe.per_row_sharing_scale, log)  # fmt: skip
    mask_set = pruner.mask_set
    finetune = replace(config, epochs=recipe.finetune_epochs, min_epochs=0, lr=recipe.lr / 2,
                       patience=recipe.patience)  # fmt: skip
    fit(model, data, finetune, teacher=dense, after_step=[mask_set.apply])
    return model, mask_set


def _fit_budget(
    candidate_model: nn.Sequential,
    data: Splits,
    budget: int,
    value_bits: int,
    method: str,
    recipe: Recipe,
    scales: list[np.ndarray] | None,
    log: Log,
) -> tuple[QuantizedMLP, list[storage.EncodedWeights]]:
    """Quantise and encode; while over budget, drop the smallest weights and try again.

    Zeroing shared weights keeps the others on their shared values, and the fixed ``scales``
    keep them on the same int8 codes, so no fine-tuning is needed for these small fixes.
    """
    for _ in range(20):
        qmodel = quantize_mlp(candidate_model, _calibration(data, recipe), weight_scales=scales)
        encodings = [_encode(layer.weight, value_bits, method) for layer in qmodel.layers]
        total = storage.storage_report(qmodel, encodings).total
        if total <= budget:
            return qmodel, encodings
        nonzero = sum(int(np.count_nonzero(layer.weight)) for layer in qmodel.layers)
        drop = max(1, math.ceil(nonzero * (total - budget) / total * 1.05))
        log(f"  {total} bytes is {total - budget} over the budget: dropping {drop} more weights")
        weights = _weights(candidate_model)
        keep = magnitude_masks(
            {n: w.detach() for n, w in weights.items()},
            min(0.999999, 1 - (nonzero - drop) / sum(w.numel() for w in weights.values())),
        )
        with torch.no_grad():
            for name, weight in weights.items():
                weight.mul_(keep[name])
    raise DeploymentError(f"could not bring the model under {budget} bytes")


def _val(model: nn.Module, data: Splits) -> float:
    return accuracy(model, data.val_x, data.val_y)


def compress_candidate(
    dense: nn.Sequential,
    data: Splits,
    budget: int,
    value_bits: int,
    recipe: Recipe,
    method: str = "prunekit",
    log: Log = lambda _: None,
    density: float | None = None,
) -> Candidate:
    name = "int8" if value_bits >= 8 else f"shared {value_bits}-bit"
    if density is None:
        density = plan_density(dense, budget, value_bits, method, recipe.neuron_exponent,
                               recipe.per_row_sharing_scale)  # fmt: skip
    log(f"{name}: planned density {density:.2%} of the weights")
    model, _ = _prune(dense, data, density, recipe, method, budget, value_bits, log)
    log(f"  pruned and fine-tuned: validation accuracy {_val(model, data):.2%} (float)")
    scales: list[np.ndarray] | None = None
    if method == "prunekit":
        removed = remove_dead_neurons(model)
        if removed:
            widths = [m.out_features for m in linear_layers(model)][:-1]
            log(f"  removed {removed} dead hidden neurons; hidden widths now {widths}")
    if value_bits < 8:
        sharing = WeightSharing(linear_layers(model), bits=value_bits,
                                per_row_scale=recipe.per_row_sharing_scale)  # fmt: skip
        config = TrainConfig(epochs=recipe.sharing_epochs, min_epochs=0, batch_size=recipe.batch_size,
                             lr=recipe.lr / 2, distill_weight=recipe.distill_weight,
                             distill_temperature=recipe.distill_temperature,
                             shift_pixels=recipe.shift_pixels, patience=recipe.patience,
                             seed=recipe.seed)  # fmt: skip
        fit(model, data, config, teacher=dense, after_step=[sharing.project])
        scales = sharing.finalize()
        log(f"  {2**value_bits - 1} shared values per layer: validation accuracy "
            f"{_val(model, data):.2%} (float)")  # fmt: skip
    qmodel, encodings = _fit_budget(model, data, budget, value_bits, method, recipe, scales, log)
    report = storage.storage_report(qmodel, encodings)
    val = integer_accuracy(qmodel, data.val_x, data.val_y)
    log(f"  {name}: {report.total} bytes, validation accuracy {val:.2%} (integer inference)")
    return Candidate(name, value_bits, model, qmodel, encodings, report, density, val)


def compress_to_budget(
    dense: nn.Sequential,
    data: Splits,
    budget: int,
    recipe: Recipe,
    value_bits: Sequence[int] = (8, 4, 3),
    method: str = "prunekit",
    log: Log = lambda _: None,
) -> Compression:
    """Every candidate encoding compressed to ``budget``; ``.best`` is the most accurate."""
    if method not in ("prunekit", "plain"):
        raise ValueError(f"unknown method {method!r}")
    bits = (8,) if method == "plain" else tuple(dict.fromkeys(value_bits))
    result = Compression(budget, method)
    densities = _promising(dense, budget, bits, recipe, method, log)
    for value_bits_, density in densities.items():
        result.candidates.append(
            compress_candidate(dense, data, budget, value_bits_, recipe, method, log, density)
        )
    return result


def _promising(
    dense: nn.Module, budget: int, bits: Sequence[int], recipe: Recipe, method: str, log: Log
) -> dict[int, float]:
    """Candidates worth training, with their planned densities: a value encoding whose budget keeps fewer than half the
    weights another one keeps loses so much capacity that training it is wasted time."""
    densities = {
        b: plan_density(
            dense, budget, b, method, recipe.neuron_exponent, recipe.per_row_sharing_scale
        )
        for b in bits
    }
    total = sum(w.numel() for w in _weights(dense).values())
    kept = {b: density * total for b, density in densities.items()}
    most = max(kept.values())
    chosen = [b for b in bits if kept[b] >= PROMISING_SHARE * most]
    for b in bits:
        if b not in chosen:
            name = "int8" if b >= 8 else f"shared {b}-bit"
            log(f"{name}: skipped, the budget keeps only {kept[b]:,.0f} weights against "
                f"{most:,.0f} for the best encoding")  # fmt: skip
    return {b: densities[b] for b in chosen}


def dense_accuracy(model: nn.Module, data: Splits) -> float:
    return accuracy(model, data.test_x, data.test_y)
