"""The variant models ``prunekit advise`` times against the dense one, one per kind of pruning.

Every builder takes the dense model and returns a ``Variant``: a pruned copy (the dense model
is never changed) or, where a kind of pruning cannot run here, no model and a ``note`` saying
why. Never an exception for "not available": the table then shows the row with ``ms: null``.

* ``unstructured`` (``kernel="dense"``): magnitude masks (``sparsity.magnitude_masks``, each
  layer at the same sparsity) zero that share of every Linear/Conv weight in place. The shapes
  do not change and dense kernels multiply the zeros too: the honest expectation is ~1.00x.
* ``unstructured`` (``kernel="csr"``): the same masked weights, each ``nn.Linear`` replaced by
  ``CsrLinear`` (a ``torch.sparse_csr`` weight, ``torch.sparse.mm``). PyTorch has no sparse
  convolution kernel: convolutions stay dense, and the note says so.
* ``2:4``: ``nm_mask(w, 2, 4, dim=1)`` on Linear weights, stored with
  ``torch.sparse.to_sparse_semi_structured`` in float16 (sparse tensor cores): CUDA with compute
  capability 8.0 or newer only; timed against the dense model in float16.
* ``channels``: ``prunekit prune --ratio R``'s exact path (``pk.prune_`` with
  ``StructuredPruning(ratio=R)``): the model physically shrinks.
* ``blocks``: residual blocks dropped whole (``pruning.blocks``; a transformer's encoder
  layers), the later ones of the network (no data-free importance of blocks exists;
  ``prunekit plan`` chooses them from measured sensitivity instead).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.inputs import ExampleInputs, map_tensors

UNSTRUCTURED_LEVELS = (0.5, 0.75, 0.9)
CHANNEL_LEVELS = (0.25, 0.5)
BLOCK_LEVEL = 0.25
NM = (2, 4)
NEEDS_AMPERE = "needs CUDA with compute capability >= 8.0 (sparse tensor cores)"
EAGER_ONLY = "sparse kernels are timed on the eager backend only"
# CSR and semi-structured outputs are checked against the masked dense model before timing
CSR_TOLERANCE = (1e-4, 1e-4)  # (atol, rtol): float32, another summation order
HALF_TOLERANCE = (1e-2, 1e-2)


@dataclass
class Variant:
    """One pruned model to time (or ``model=None`` and a ``note`` saying why not)."""

    strategy: str  # unstructured, 2:4, channels, blocks
    level: float  # the fraction removed: of the weights, of each group's channels, of blocks
    kernel: str  # dense, csr, semi-structured
    model: nn.Module | None
    note: str | None = None
    macs_kept: float | None = None  # of the dense model's MACs (see ``work_kept``)
    reference: str = "dense"  # the dense model it is timed against ("dense-fp16" for 2:4)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.strategy}@{self.level:g}/{self.kernel}"


def _weighted_layers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of Linear and convolution modules, by the module's qualified name."""
    kinds = (nn.Linear, nn.modules.conv._ConvNd)
    return {
        name: m.weight
        for name, m in model.named_modules()
        if isinstance(m, kinds) and isinstance(getattr(m, "weight", None), torch.Tensor)
    }


def mask_in_place(model: nn.Module, level: float) -> dict[str, float]:
    """Zero ``level`` of every Linear/Conv weight (smallest magnitudes, each layer alike) in
    place; returns each layer's share of zeros."""
    from prunekit.sparsity import magnitude_masks

    layers = _weighted_layers(model)
    weights = {name: w.detach() for name, w in layers.items()}
    if not weights:
        return {}
    masks = magnitude_masks(weights, level, scope="layer")
    zeros = {}
    with torch.no_grad():
        for name, mask in masks.items():
            weight = layers[name]
            weight.mul_(mask.to(weight.device, weight.dtype))
            zeros[name] = int(torch.count_nonzero(weight == 0)) / weight.numel()
    return zeros


def work_kept(dense_macs: Any, densities: dict[str, float]) -> float:
    """The share of the dense MACs that non-zero weights account for (what an ideal sparse
    kernel would compute): each layer's MACs scaled by its density."""
    total = dense_macs.total
    if not total:
        return 1.0
    removed = sum(dense_macs.by_module.get(name, 0) * (1 - d) for name, d in densities.items())
    return 1 - removed / total


class CsrLinear(nn.Module):
    """``nn.Linear`` computing with a ``torch.sparse_csr`` weight (``torch.sparse.mm``)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support")
            csr = weight.to_sparse_csr()
        self.register_buffer("weight", csr, persistent=False)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone(),
                             persistent=False)  # fmt: skip
        self.nnz = int(torch.count_nonzero(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz}")  # fmt: skip


def _plain_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``nn.Linear`` modules (exactly that type) that nothing reads the weight of directly:
    not those of ``nn.MultiheadAttention``, whose functional forward takes their weights."""
    inside_attention = {
        f"{name}.{child}" if name else child
        for name, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for child, _ in m.named_children()
    }
    return {
        name: m
        for name, m in model.named_modules()
        if type(m) is nn.Linear and name and name not in inside_attention
    }


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def to_csr(masked: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``masked`` with every plain ``nn.Linear`` replaced by ``CsrLinear``; returns
    it and the names replaced."""
    model = copy.deepcopy(masked)
    names = list(_plain_linears(model))
    for name in names:
        _set(model, name, CsrLinear(model.get_submodule(name)))  # type: ignore[arg-type]
    return model, names


def _outputs(model: nn.Module, example: ExampleInputs) -> list[torch.Tensor]:
    from prunekit.measure.backends._base import eager_reference

    was_training = model.training
    model.eval()
    try:
        return eager_reference(model, example)
    finally:
        model.train(was_training)


def _parity_note(reference: nn.Module, candidate: nn.Module, example: ExampleInputs,
                 what: str, tolerance: tuple[float, float]) -> str | None:  # fmt: skip
    """None when ``candidate`` computes what ``reference`` does on ``example``; else why not."""
    from prunekit.errors import PrunekitError
    from prunekit.measure.backends import check_parity

    try:
        check_parity(_outputs(reference, example), _outputs(candidate, example), what,
                     atol=tolerance[0], rtol=tolerance[1])  # fmt: skip
    except PrunekitError as exc:
        return f"not timed: {exc}"
    except Exception as exc:  # a model that reads a replaced layer's weight, say
        return f"not timed: {what} does not run ({type(exc).__name__}: {exc})"
    return None


def unstructured_variants(model: nn.Module, example: ExampleInputs, dense_macs: Any,
                          *, levels: tuple[float, ...] = UNSTRUCTURED_LEVELS,
                          sparse_kernels: bool = True) -> list[Variant]:  # fmt: skip
    """Per level, the masked model on dense kernels and (``sparse_kernels``) on CSR kernels."""
    variants = []
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    for level in levels:
        masked = copy.deepcopy(model)
        densities = {k: 1 - z for k, z in mask_in_place(masked, level).items()}
        kept = work_kept(dense_macs, densities)
        dense_note = None if densities else "no Linear or convolution layer to sparsify"
        variants.append(Variant("unstructured", level, "dense", masked if densities else None,
                                dense_note, kept,
                                details={"zeros": {k: 1 - d for k, d in densities.items()}}))  # fmt: skip
        variants.append(_csr_variant(masked, example, level, kept, has_conv, sparse_kernels))
    return variants


def _csr_variant(masked: nn.Module, example: ExampleInputs, level: float, kept: float,
                 has_conv: bool, sparse_kernels: bool) -> Variant:  # fmt: skip
    if not sparse_kernels:
        return Variant("unstructured", level, "csr", None, EAGER_ONLY, kept)
    csr, names = to_csr(masked)
    if not names:
        return Variant("unstructured", level, "csr", None,
                       "no nn.Linear layer: CSR kernels apply to Linear layers only, and "
                       "PyTorch has no sparse convolution kernel", kept)  # fmt: skip
    notes = []
    if has_conv:
        notes.append(f"CSR for the {len(names)} Linear layer(s); convolutions stay dense "
                     "(PyTorch has no sparse convolution kernel)")  # fmt: skip
    failed = _parity_note(masked, csr, example, "the CSR model", CSR_TOLERANCE)
    if failed:
        return Variant("unstructured", level, "csr", None, failed, kept)
    return Variant("unstructured", level, "csr", csr, "; ".join(notes) or None, kept,
                   details={"csr_layers": names})  # fmt: skip


class Float16(nn.Module):
    """Runs ``model`` in float16: floating-point inputs cast down, outputs cast back up."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        def down(t: torch.Tensor) -> torch.Tensor:
            return t.half() if t.is_floating_point() else t

        def up(t: torch.Tensor) -> torch.Tensor:
            return t.float() if t.is_floating_point() else t

        out = self.model(*map_tensors(args, down), **map_tensors(kwargs, down))
        return map_tensors(out, up)


def semi_structured_support(device: torch.device) -> str | None:
    """None when 2:4 semi-structured kernels can run on ``device``; else why not."""
    if device.type != "cuda":
        return f"{NEEDS_AMPERE}; this is the CPU"
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"this PyTorch ({torch.__version__}) has no torch.sparse.to_sparse_semi_structured"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 0):
        name = torch.cuda.get_device_name(device)
        return f"{NEEDS_AMPERE}; {name} has {major}.{minor}"
    return None


def semi_structured_variants(model: nn.Module, example: ExampleInputs, dense_macs: Any,
                             device: torch.device, *,
                             backend: str = "eager") -> tuple[list[Variant], nn.Module | None]:  # fmt: skip
    """The 2:4 variant and the float16 dense model it is timed against (None when it cannot
    run here: then the variant has no model and says why)."""
    level = 1 - NM[0] / NM[1]
    why = semi_structured_support(device)
    if why is None and backend != "eager":
        why = EAGER_ONLY
    if why is not None:
        return [Variant("2:4", level, "semi-structured", None, why, None)], None
    from prunekit.sparsity import nm_mask

    dense16 = Float16(copy.deepcopy(model).half().to(device))
    masked16 = copy.deepcopy(dense16)
    sparse16 = copy.deepcopy(dense16)
    converted, skipped = [], []
    densities = {}
    for name, linear in _plain_linears(sparse16.model).items():
        weight = linear.weight.detach()
        try:
            keep = nm_mask(weight, *NM, dim=1)
            pruned = weight * keep
            linear.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(pruned),
                                         requires_grad=False)  # fmt: skip
        except Exception as exc:  # a shape the kernels refuse: the layer stays dense
            skipped.append(f"{name} ({type(exc).__name__})")
            continue
        target = masked16.model.get_submodule(name)
        assert isinstance(target, nn.Linear)
        with torch.no_grad():
            target.weight.copy_(pruned)
        converted.append(name)
        densities[name] = NM[0] / NM[1]
    if not converted:
        note = "no nn.Linear layer fits the 2:4 kernels" + (
            f" ({', '.join(skipped[:4])})" if skipped else ""
        )
        return [Variant("2:4", level, "semi-structured", None, note, None)], None
    notes = [f"2:4 on {len(converted)} Linear layer(s), timed against the dense model in float16"]
    if skipped:
        notes.append(f"left dense: {', '.join(skipped[:4])}")
    failed = _parity_note(masked16, sparse16, example.to(device), "the 2:4 model",
                          HALF_TOLERANCE)  # fmt: skip
    if failed:
        return [Variant("2:4", level, "semi-structured", None, failed, None)], None
    variant = Variant("2:4", level, "semi-structured", sparse16, "; ".join(notes),
                      work_kept(dense_macs, densities), reference="dense-fp16",
                      details={"layers": converted})  # fmt: skip
    return [variant], dense16


def channel_variant(model: nn.Module, example: ExampleInputs, ratio: float) -> Variant:
    """``prunekit prune MODEL --ratio R``: the same config, the same front door."""
    import prunekit as pk

    pruned = copy.deepcopy(model)
    record: dict[str, Any] = {}
    try:
        pk.prune_(pruned, example, pk.StructuredPruning(ratio=ratio), record=record)
    except Exception as exc:
        return Variant("channels", ratio, "dense", None,
                       f"structured pruning failed here: {type(exc).__name__}: {exc}")  # fmt: skip
    notes = [f"left unpruned: {', '.join(list(record.get('skipped') or {})[:4])}"] if record.get(
        "skipped") else []  # fmt: skip
    return Variant("channels", ratio, "dense", pruned, "; ".join(notes) or None,
                   record["kept"]["macs"],
                   details={"params_kept": record["kept"]["params"]})  # fmt: skip


def droppable_blocks(model: nn.Module) -> list[str]:
    """Residual blocks in network order, none inside another candidate (the inner ones go)."""
    from prunekit.pruning.blocks import find_residual_blocks

    found = find_residual_blocks(model)
    return [b for b in found if not any(o.startswith(b + ".") for o in found)]


def block_variant(model: nn.Module, example: ExampleInputs, dense_macs: Any,
                  fraction: float = BLOCK_LEVEL,
                  count_macs: Callable[..., Any] | None = None) -> Variant:  # fmt: skip
    """The last ``fraction`` of the droppable residual blocks dropped (at least one); the
    variant's level is the share dropped."""
    from prunekit.measure.macs import count_macs as default_count
    from prunekit.pruning.blocks import drop_blocks

    candidates = droppable_blocks(model)
    if not candidates:
        layers = encoder_layer_variant(model, example, dense_macs, fraction, count_macs)
        return layers or Variant("blocks", fraction, "dense", None,
                                 "no residual block (a module computing x + branch(x)) and no "
                                 "list of transformer encoder layers to drop")  # fmt: skip
    k = max(1, round(fraction * len(candidates)))
    chosen = candidates[-k:]
    pruned = copy.deepcopy(model)
    try:
        drop_blocks(pruned, chosen, [example])
    except Exception as exc:
        return Variant("blocks", fraction, "dense", None,
                       f"dropping blocks failed here: {type(exc).__name__}: {exc}")  # fmt: skip
    macs = (count_macs or default_count)(pruned, example).total
    note = (f"dropped the last {k} of {len(candidates)} residual blocks ({', '.join(chosen[:4])}"
            f"{', ...' if k > 4 else ''}); each branch replaced by its mean output on the "
            "example input")  # fmt: skip
    # the level is the share really dropped (1 of 2 blocks is 50%, whatever was asked)
    return Variant("blocks", k / len(candidates), "dense", pruned, note,
                   macs / dense_macs.total if dense_macs.total else None,
                   details={"dropped": chosen, "candidates": len(candidates)})  # fmt: skip


def encoder_layer_variant(model: nn.Module, example: ExampleInputs, dense_macs: Any,
                          fraction: float,
                          count_macs: Callable[..., Any] | None = None) -> Variant | None:  # fmt: skip
    """A transformer's blocks are its encoder layers (their residual additions sit inside
    each layer, where ``find_residual_blocks`` finds no ``x + branch(x)`` module): the last
    ``fraction`` of them dropped (at least one, never all), as ``prune HF_DIR --layers N`` drops
    layers (there by importance; here the last ones, like the residual blocks).
    None when the model has no list of encoder layers."""
    from prunekit.criteria.layer_importance import drop_layers, encoder_layers
    from prunekit.errors import PrunekitError
    from prunekit.measure.macs import count_macs as default_count

    try:
        name, layers = encoder_layers(model)
    except PrunekitError:
        return None
    count = len(layers)
    if count < 2:
        return Variant("blocks", fraction, "dense", None,
                       f"one encoder layer ({name}): none can be dropped")  # fmt: skip
    k = min(count - 1, max(1, round(fraction * count)))
    pruned = drop_layers(copy.deepcopy(model), list(range(count - k, count)))
    macs = (count_macs or default_count)(pruned, example).total
    note = f"dropped the last {k} of {count} encoder layers ({name})"
    return Variant("blocks", k / count, "dense", pruned, note,
                   macs / dense_macs.total if dense_macs.total else None,
                   details={"dropped": [f"{name}.{i}" for i in range(count - k, count)],
                            "candidates": count})  # fmt: skip


def build_variants(model: nn.Module, example: ExampleInputs, *,
                   device: torch.device | str = "cpu", backend: str = "eager",
                   log: Callable[[str], None] | None = None) -> tuple[list[Variant], dict[str, nn.Module]]:  # fmt: skip
    """Every variant, in table order, and the dense reference models they are timed against
    (``dense``, plus ``dense-fp16`` when a 2:4 variant runs)."""
    from prunekit.measure.macs import count_macs

    say = log or (lambda _: None)
    dev = torch.device(device)
    model = model.eval()
    dense_macs = count_macs(model, example)
    say("building unstructured variants (magnitude masks, dense and CSR kernels)")
    variants = unstructured_variants(model, example, dense_macs,
                                     sparse_kernels=backend == "eager")  # fmt: skip
    say("building the 2:4 variant")
    nm, dense16 = semi_structured_variants(model, example, dense_macs, dev, backend=backend)
    variants += nm
    for ratio in CHANNEL_LEVELS:
        say(f"pruning {ratio:.0%} of every channel group (as `prunekit prune --ratio {ratio:g}`)")
        variants.append(channel_variant(model, example, ratio))
    say("dropping residual blocks")
    variants.append(block_variant(model, example, dense_macs))
    references = {"dense": model}
    if dense16 is not None:
        references["dense-fp16"] = dense16
    return variants, references
