"""A folder of images sorted into one sub-directory per class, with the ImageNet eval transform."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prunekit.errors import DataError

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

# Per-channel statistics of the ImageNet training set, used by every torchvision classifier.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LAYOUT_HINT = "expected layout: root/<class_name>/<image files>"


def image_folder_dataset(
    root: str | Path,
    *,
    image_size: int = 224,
    resize_size: int = 256,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ImageFolder:
    """A torchvision ``ImageFolder`` over ``root`` with the standard evaluation transform.

    Transform: Resize(resize_size) of the shorter side, CenterCrop(image_size), ToTensor,
    Normalize(mean, std); items are (float32 tensor [3, image_size, image_size], class index),
    class indices following the sorted class directory names.
    """
    # torchvision is imported here, not at module level, so ``import prunekit.data`` stays light.
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.exists():
        raise DataError(f"image folder {root}: no such directory")
    if not root.is_dir():
        raise DataError(f"image folder {root}: not a directory; {_LAYOUT_HINT}")
    if not any(entry.is_dir() for entry in root.iterdir()):
        raise DataError(f"image folder {root}: no class sub-directories; {_LAYOUT_HINT}")
    transform = transforms.Compose(
        [
            transforms.Resize(resize_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    try:
        return ImageFolder(str(root), transform=transform)
    except FileNotFoundError as exc:
        # Raised by torchvision when a class directory holds no file with an image extension.
        message = str(exc).strip().rstrip(".")
        raise DataError(f"image folder {root}: {message}; {_LAYOUT_HINT}") from None
