"""Data specs shared by every command: one string names a dataset, and its held-out split.

A spec is one of:

- ``mnist``, ``fashion-mnist``, ``digits``: built in (Fashion-MNIST from Debian's
  ``dataset-fashion-mnist``, MNIST downloaded once into the prunekit cache, the digits bundled
  with scikit-learn). Their official train / test split is kept: prunekit fits on train and
  reports on test.
- a directory of MNIST-format IDX files (``train-images-idx3-ubyte`` ... optionally ``.gz``):
  the same, with the directory's own train / test split;
- an ImageFolder directory (one sub-directory per class); with ``train/`` and ``val/`` (or
  ``test/``) sub-folders those are the split, otherwise a seeded share is held out;
- a segmentation folder: ``images/`` and ``masks/`` holding files with the same stem, masks as
  PNG class indices (255 = ignore);
- a text file of sentences, one per line (label-free: embedding fidelity and distillation);
- ``scenes`` (or ``scenes:FIT,EVAL``): generated perception scenes with exact boxes, masks
  and depth (``prunekit.data.scenes``; 2000 fit + 500 eval by default), sized to the model's
  input; fit and eval scenes use disjoint regions of the photographs.
- ``scenes-masks`` (or ``scenes-masks:FIT,EVAL``): the same scenes as segmentation data,
  items ``(image float32 [3, H, W] in [0, 1], mask int64 [H, W])`` with classes 0 = backdrop,
  1..4 = the object shapes (``prunekit.data.scenes.CLASSES``), the format of a segmentation
  folder, so ``evaluate`` scores mIoU / Dice and ``finetune`` / ``sparsify`` train on them.

A prefix (``idx:``, ``images:``, ``segmentation:``, ``sentences:``) forces the kind.

**Held-out discipline.** ``load_data`` always returns two disjoint parts: ``fit`` (calibrate,
refit, train, distil, and carve validation from) and ``eval`` (report on, never seen by
anything that learns). ``split`` records how they were made (seed, sizes, where eval came
from), and every command writes it into its JSON.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from prunekit.errors import DataError

BUILT_IN = ("mnist", "fashion-mnist", "digits", "scenes", "scenes-masks")
KINDS = ("idx", "images", "segmentation", "sentences", "scenes", "scenes-masks")
TASK_OF_KIND = {
    "builtin": "classification",
    "idx": "classification",
    "images": "classification",
    "segmentation": "segmentation",
    "sentences": "embedding",
    "scenes": "perception",
    "scenes-masks": "segmentation",
}
SCENES_DEFAULT = (2000, 500)
EVAL_FRACTION = 0.2
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}
_MNIST_CACHE = Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit")) / "mnist"
SPEC_HELP = (  # prunekit.cli._common.DATA_HELP says the same without importing torch
    "mnist, fashion-mnist, digits, scenes, scenes-masks, an IDX directory, an ImageFolder "
    "directory, a segmentation folder (images/ + masks/) or a text file of sentences"
)


@dataclass(frozen=True)
class DataSplit:
    """How ``fit`` and ``eval`` were made: recorded in every command's JSON."""

    seed: int
    fit: int
    eval: int
    eval_from: str  # e.g. "the test split of fashion-mnist" or "a seeded 20% of DIR"

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "fit": self.fit, "eval": self.eval, "eval_from": self.eval_from}


@dataclass
class Data:
    """A dataset resolved from a spec: ``fit`` and ``eval`` parts (datasets of ``(x, y)``
    items, or lists of sentences), the task it serves and how it was split."""

    spec: str
    kind: str  # "builtin" | "idx" | "images" | "segmentation" | "sentences"
    task: str  # "classification" | "segmentation" | "embedding"
    fit: Any
    eval: Any
    split: DataSplit
    num_classes: int | None = None
    item_shape: tuple[int, ...] | None = None  # one input without the batch dimension
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "task": self.task,
            "split": self.split.to_dict(),
            "eval_samples": self.split.eval,
            **({"item_shape": list(self.item_shape)} if self.item_shape else {}),
            **self.details,
        }

    def fit_and_validation(self, fraction: float, seed: int) -> tuple[Any, Any]:
        """``fit`` cut in two (seeded): train on the first, choose (best epoch, early stop) on
        the second; ``eval`` stays untouched."""
        return seeded_split(self.fit, fraction, seed, f"{self.spec} (fit part)")

    def shaped_for(self, shape: Sequence[int] | None) -> Data:
        """This data with every input reshaped to ``shape`` (no batch dimension) when the
        element count agrees (a flat MLP on 28x28 images); an impossible shape is an error."""
        if shape is None or self.item_shape is None or tuple(shape) == self.item_shape:
            return self
        target = tuple(int(s) for s in shape)
        if _numel(target) != _numel(self.item_shape):
            raise DataError(
                f"--data {self.spec}: its inputs are {list(self.item_shape)} but the model takes "
                f"{list(target)}; use data of the model's input shape (or --input-shape)"
            )
        return Data(
            self.spec,
            self.kind,
            self.task,
            _Reshaped(self.fit, target),
            _Reshaped(self.eval, target),
            self.split,
            self.num_classes,
            target,
            self.details,
        )


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class _Reshaped(Dataset[tuple[torch.Tensor, Any]]):
    def __init__(self, base: Any, shape: tuple[int, ...]) -> None:
        self.base, self.shape = base, shape

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        x, y = self.base[index]
        return x.reshape(self.shape), y


def _permutation(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def seeded_split(
    items: Any, fraction: float, seed: int, what: str, *, held: int | None = None
) -> tuple[Any, Any]:
    """Split ``items`` (a dataset or a list) into (fit, held out): ``fraction`` of them (or
    exactly ``held``) held out, chosen by a seeded permutation, each part in the original
    order. Every command splits with this one function, so the same seed and size hold out
    the same items everywhere (``prunekit prune --heads`` and ``prunekit evaluate`` agree)."""
    n = len(items)
    if not 0 < fraction < 1:
        raise DataError(f"the held-out fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise DataError(f"{what}: {n} sample(s); need at least 2 to hold some out")
    if held is None:
        held = round(n * fraction)
    held = min(n - 1, max(1, held))
    order = _permutation(n, seed)
    rest_idx, held_idx = sorted(order[held:]), sorted(order[:held])
    if isinstance(items, list):
        return [items[i] for i in rest_idx], [items[i] for i in held_idx]
    return Subset(items, rest_idx), Subset(items, held_idx)


def parse_spec(spec: str) -> tuple[str, str]:
    """(kind, location) of a spec, without touching the disk beyond existence checks."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"--data needs a data spec: {SPEC_HELP}")
    if spec in ("scenes", "scenes-masks"):
        return spec, ""
    if spec in BUILT_IN:
        return "builtin", spec
    kind, sep, rest = spec.partition(":")
    if sep and kind in KINDS and rest:
        return kind, rest
    path = Path(spec)
    if not path.exists():
        raise DataError(
            f"--data {spec}: no such file or directory, and not a built-in dataset ({SPEC_HELP})"
        )
    if path.is_file():
        return "sentences", spec
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return "segmentation", spec
    from prunekit.data.idx import find_idx_files

    try:
        find_idx_files(path, "train")
        return "idx", spec
    except DataError:
        return "images", spec


def load_data(
    spec: str,
    *,
    seed: int = 0,
    eval_fraction: float = EVAL_FRACTION,
    image_size: int | None = None,
    max_sentences: int = 50_000,
) -> Data:
    """Resolve ``spec`` (see the module docstring) to ``Data`` with disjoint fit / eval parts.

    ``seed`` and ``eval_fraction`` make the split where the data has none of its own.
    ``image_size``: the side images of an ImageFolder / segmentation folder are resized and
    cropped to (default 224). Raises ``DataError`` with a one-line reason.
    """
    kind, location = parse_spec(spec)
    if kind in ("scenes", "scenes-masks"):
        return _scenes(spec, location, seed, image_size or 160, masks=kind == "scenes-masks")
    if kind == "builtin":
        return _builtin(location, seed)
    if kind == "idx":
        return _idx(spec, Path(location), f"the test split of {location}")
    if kind == "images":
        return _image_folder(spec, Path(location), seed, eval_fraction, image_size or 224)
    if kind == "segmentation":
        return _segmentation(spec, Path(location), seed, eval_fraction, image_size or 224)
    return _sentences(spec, Path(location), seed, eval_fraction, max_sentences)


def mnist_root(cache: Path | None = None, pass_as: str = "a directory") -> Path:
    """MNIST's IDX files in the prunekit cache (or ``cache``), downloaded with torchvision the
    first time; offline this fails with a message saying how to pass the files instead
    (``pass_as``: the option that takes them)."""
    root = cache if cache is not None else _MNIST_CACHE
    raw = root / "MNIST" / "raw"
    if raw.is_dir() and any(raw.glob("t10k-labels*")):
        return root
    from torchvision.datasets import MNIST

    try:
        for train in (True, False):
            MNIST(str(root), train=train, download=True)
    except Exception as exc:  # URLError, HTTPError, RuntimeError("Error downloading ...")
        raise DataError(
            f"could not download MNIST ({type(exc).__name__}: {exc}); without internet pass "
            f"{pass_as} with the four IDX files (train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, "
            "optionally .gz)"
        ) from None
    return root


def _builtin(name: str, seed: int) -> Data:
    if name == "digits":
        from prunekit.data.digits import load_digits_split

        fit, test = load_digits_split("train", seed=seed), load_digits_split("test", seed=seed)
        split = DataSplit(seed, len(fit), len(test), "a stratified 25% of the digits (seeded)")
        return Data(name, "builtin", "classification", fit, test, split, 10, (1, 8, 8))
    if name == "fashion-mnist":
        from prunekit.data.idx import FASHION_MNIST_DEBIAN_DIR

        if not FASHION_MNIST_DEBIAN_DIR.is_dir():
            raise DataError(
                "fashion-mnist: not installed (on Debian: apt install dataset-fashion-mnist); "
                "or pass a directory with its four IDX files"
            )
        data = _idx(name, FASHION_MNIST_DEBIAN_DIR, "the test split of fashion-mnist")
    else:
        data = _idx(name, mnist_root(), "the test split of mnist")
    data.kind = "builtin"
    return data


def _scenes(spec: str, sizes: str, seed: int, image_size: int, *, masks: bool = False) -> Data:
    from prunekit.data.scenes import CLASSES, SceneMasks, SceneSet

    name = "scenes-masks" if masks else "scenes"
    fit_n, eval_n = SCENES_DEFAULT
    if sizes:
        try:
            fit_n, eval_n = (int(v) for v in sizes.split(","))
        except ValueError:
            raise DataError(f"--data {spec}: expected {name}:FIT,EVAL (two counts of scenes, "
                            f"e.g. {name}:2000,500)") from None  # fmt: skip
        if fit_n < 1 or eval_n < 1:
            raise DataError(f"--data {spec}: both counts must be at least 1")
    if image_size < 32:  # the scenes' objects need room: SceneSet's own floor, said for --data
        raise DataError(f"--data {spec}: scenes are drawn at 32 px or more, and this model "
                        f"takes {image_size} px images (its --input-shape)")  # fmt: skip
    fit: Any = SceneSet(fit_n, seed, size=image_size, split="fit")
    held: Any = SceneSet(eval_n, seed, size=image_size, split="eval")
    if masks:
        fit, held = SceneMasks(fit), SceneMasks(held)
    split = DataSplit(seed, fit_n, eval_n, "generated eval scenes (photo regions disjoint from "
                      "those of the fit scenes)")  # fmt: skip
    task = "segmentation" if masks else "perception"
    return Data(spec, name, task, fit, held, split, len(CLASSES),
                (3, image_size, image_size), {"image_size": image_size})  # fmt: skip


def _idx(spec: str, root: Path, eval_from: str) -> Data:
    from prunekit.data.idx import load_idx_split

    train_x, train_y = load_idx_split(root, "train")
    test_x, test_y = load_idx_split(root, "test")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{root}: train images are {tuple(train_x.shape[1:])} but test images are "
            f"{tuple(test_x.shape[1:])}; the files belong to different datasets"
        )

    def tensors(x: torch.Tensor, y: torch.Tensor) -> TensorDataset:
        images = x.to(torch.float32).div_(255.0)
        if images.dim() == 3:
            images = images.unsqueeze(1)  # [N, 1, H, W]
        return TensorDataset(images, y.to(torch.int64))

    fit, test = tensors(train_x, train_y), tensors(test_x, test_y)
    classes = int(max(int(train_y.max()), int(test_y.max()))) + 1
    split = DataSplit(0, len(fit), len(test), eval_from)
    shape = tuple(fit.tensors[0].shape[1:])
    return Data(spec, "idx", "classification", fit, test, split, classes, shape)


def _image_folder(spec: str, root: Path, seed: int, fraction: float, size: int) -> Data:
    from prunekit.data.image_folder import image_folder_dataset

    resize = round(size * 256 / 224)
    for fit_name, eval_name in (("train", "val"), ("train", "test")):
        if (root / fit_name).is_dir() and (root / eval_name).is_dir():
            fit = image_folder_dataset(root / fit_name, image_size=size, resize_size=resize)
            test = image_folder_dataset(root / eval_name, image_size=size, resize_size=resize)
            if fit.classes != test.classes:
                raise DataError(
                    f"{root}: {fit_name}/ and {eval_name}/ have different class folders "
                    f"({len(fit.classes)} vs {len(test.classes)})"
                )
            split = DataSplit(seed, len(fit), len(test), f"{root / eval_name}")
            return Data(spec, "images", "classification", fit, test, split,
                        len(fit.classes), (3, size, size))  # fmt: skip
    dataset = image_folder_dataset(root, image_size=size, resize_size=resize)
    fit_part, eval_part = seeded_split(dataset, fraction, seed, str(root))
    split = DataSplit(seed, len(fit_part), len(eval_part), f"a seeded {fraction:.0%} of {root}")
    return Data(spec, "images", "classification", fit_part, eval_part, split,
                len(dataset.classes), (3, size, size))  # fmt: skip


class SegmentationFolder(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``images/NAME.*`` with ``masks/NAME.png`` (class index per pixel, 255 = ignore): items
    are (float32 [3, size, size] ImageNet-normalised, int64 [size, size]); images are resized
    bilinearly, masks by nearest neighbour, both to a square ``size``."""

    def __init__(self, root: Path, size: int) -> None:
        self.root, self.size = root, size
        masks = {p.stem: p for p in (root / "masks").iterdir() if p.suffix.lower() == ".png"}
        images = sorted(
            p for p in (root / "images").iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES
        )
        if not images:
            raise DataError(f"segmentation folder {root}: images/ holds no image file")
        missing = [p.name for p in images if p.stem not in masks]
        if missing:
            raise DataError(
                f"segmentation folder {root}: no mask for {', '.join(missing[:3])}"
                f"{' ...' if len(missing) > 3 else ''} (expected masks/<same name>.png)"
            )
        self.pairs = [(p, masks[p.stem]) for p in images]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np
        from PIL import Image
        from torchvision.transforms import functional as TF

        from prunekit.data.image_folder import IMAGENET_MEAN, IMAGENET_STD

        image_path, mask_path = self.pairs[index]
        with Image.open(image_path) as img:
            image = img.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        with Image.open(mask_path) as m:
            if m.mode not in ("L", "P", "I", "I;16"):
                raise DataError(
                    f"{mask_path}: a mask must be a single-channel PNG of class indices, got "
                    f"mode {m.mode}"
                )
            mask = m.resize((self.size, self.size), Image.Resampling.NEAREST)
            mask_array = np.array(mask, dtype=np.int64)
        x = TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
        return x, torch.from_numpy(mask_array)


def _segmentation(spec: str, root: Path, seed: int, fraction: float, size: int) -> Data:
    dataset = SegmentationFolder(root, size)
    fit_part, eval_part = seeded_split(dataset, fraction, seed, str(root))
    split = DataSplit(seed, len(fit_part), len(eval_part), f"a seeded {fraction:.0%} of {root}")
    return Data(spec, "segmentation", "segmentation", fit_part, eval_part, split, None,
                (3, size, size))  # fmt: skip


def _sentences(spec: str, path: Path, seed: int, fraction: float, limit: int) -> Data:
    from prunekit.data import sample_sentences

    sentences, total = sample_sentences(path, limit)
    fit_part, eval_part = seeded_split(sentences, fraction, seed, str(path))
    split = DataSplit(seed, len(fit_part), len(eval_part), f"a seeded {fraction:.0%} of {path}")
    details = {"sentences_in_file": total} if total != len(sentences) else {}
    return Data(spec, "sentences", "embedding", fit_part, eval_part, split, None, None, details)
