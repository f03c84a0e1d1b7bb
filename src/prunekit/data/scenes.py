"""Generated scenes with exact labels: shapes composited at known depths over real photographs.

No labelled detection / segmentation / depth dataset can be downloaded offline, so this module
draws one. Each scene is a crop of a real photograph (those shipped with scikit-image and
scikit-learn, see ``backgrounds``) seen as a backdrop, with 1 to ``max_objects`` textured
shapes (``CLASSES``) standing in front of it. Per image it gives bounding boxes and class labels
(torchvision detection convention), a per-pixel semantic mask, a per-pixel depth map in metres
and an instance map.

What is exact: every label is computed from the same geometry that drew the pixels. A pixel
(row ``r``, column ``c``) belongs to an object when its centre ``(c, r)`` lies inside the shape
(hard edges, no anti-aliasing), objects are painted from far to near so the nearest one wins
each pixel (a z-buffer), and the mask, depth and instance maps are written by the same painting
step as the colours. A box is the tight box of the object's *visible* pixels, in pixel
coordinates where pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``: ``x1, y1`` = the first
visible column and row, ``x2, y2`` = the last ones plus one. An object with less than
``MIN_VISIBLE`` (20 %) of its footprint visible is no longer listed in ``boxes`` / ``labels``
(a detector is not asked to find it), but its visible pixels keep its class in ``mask``, its
depth in ``depth`` and its id in ``instances``: the maps always describe the pixels.

What is synthetic: the world. The backdrop is a flat, tilted plane (a poster) whose depth grows
from ``BACKDROP_BOTTOM`` metres at the bottom row to ``BACKDROP_TOP`` metres at the top row
(inverse depth linear in the row, as for any plane seen through a pinhole camera); the photo's
own content carries no depth. Objects are flat cut-outs facing the camera at one depth each
(``OBJECT_DEPTH``, always nearer than the backdrop), with a physical size ``OBJECT_SIZE`` so
that their apparent size is ``FOCAL * size * physical size / depth``, and they stand on a ground
plane seen from a camera ``CAMERA_HEIGHT`` metres high: an object's lowest point lies at row
``horizon + FOCAL * size * camera height / depth`` (plus a little jitter). Depth is therefore
learnable from both apparent size and position in the image. Colours, textures (flat shaded,
stripes, or tinted patches of the photos) and rotations are random; the whole image gets a
random gain and a little Gaussian noise.

Held-out discipline: ``fit`` and ``eval`` scenes use the same photographs but disjoint regions
of each one. A photo of ``H x W`` pixels is cut at column ``W - min(H, W) // 2``: ``fit`` crops
(backdrops and the photo textures of objects) lie wholly left of the cut, ``eval`` crops wholly
right of it, so no photo pixel of an ``eval`` scene appears in any ``fit`` scene.

scikit-image and scikit-learn are optional (``prunekit[data]``); they are imported only when
the photographs are first loaded, and either one is enough.
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from prunekit.errors import DataError, InvalidValueError

__all__ = [
    "BACKDROP_BOTTOM",
    "BACKDROP_TOP",
    "CAMERA_HEIGHT",
    "CLASSES",
    "FOCAL",
    "MIN_VISIBLE",
    "OBJECT_DEPTH",
    "OBJECT_SIZE",
    "SPLITS",
    "BackgroundCrop",
    "Scene",
    "SceneMasks",
    "SceneObject",
    "SceneSet",
    "background_names",
    "backgrounds",
    "collate_scenes",
    "make_scene",
    "split_columns",
]

CLASSES: tuple[str, ...] = ("background", "disc", "square", "triangle", "ring")
"""Class names by id; id 0 is the backdrop, objects have ids 1..4."""

SPLITS: tuple[str, ...] = ("fit", "eval")

FOCAL = 0.8
"""Focal length as a fraction of the image side (a horizontal field of view of about 64 degrees)."""
OBJECT_DEPTH = (1.0, 4.0)
"""Object depths in metres, drawn uniformly."""
OBJECT_SIZE = (0.3, 0.6)
"""Physical size of an object in metres (diameter of the disc of about the same area)."""
BACKDROP_BOTTOM = (4.5, 5.5)
"""Depth of the backdrop plane at the bottom row, metres (drawn per scene)."""
BACKDROP_TOP = (8.0, 10.0)
"""Depth of the backdrop plane at the top row, metres (drawn per scene)."""
CAMERA_HEIGHT = (0.6, 0.7)
"""Height of the camera above the ground plane the objects stand on, metres (per scene)."""
HORIZON = (0.3, 0.4)
"""Row of the horizon as a fraction of the image side (per scene)."""
MIN_VISIBLE = 0.2
"""An object with a smaller visible fraction of its footprint is left out of boxes / labels."""

_MIN_SIZE = 32
# circumradius of each class per unit "radius" (half the physical size), chosen so that every
# class covers about the area of a disc of that radius (the ring loses its hole)
_CIRCUMRADIUS = {
    1: 1.0,
    2: math.sqrt(math.pi / 2.0),
    3: math.sqrt(4.0 * math.pi / (3.0 * 3**0.5)),
    4: 1.0,
}
_RING_HOLE = (0.45, 0.65)  # inner radius of a ring as a fraction of its outer radius
_CROP_FRACTION = (0.3, 0.5)  # backdrop crop side as a fraction of min(H, W) of its photo
_GROUND_JITTER = 0.02  # standard deviation of an object's ground row, fraction of the side
_SPLIT_CODE = {"fit": 0, "eval": 1}
_SEED_DOMAIN = 0x5CE7E5  # keeps scene seeds apart from other uses of the same seed numbers


@dataclass(frozen=True)
class SceneObject:
    """One painted object: its class, depth and the exact geometry of its footprint.

    ``cx, cy``: centre in pixels (pixel ``(r, c)`` has its centre at ``(c, r)``); ``radius``:
    circumradius in pixels; ``angle``: rotation in radians; ``hole``: a ring's inner radius as
    a fraction of ``radius`` (0 for the other classes); ``size_m``: physical size in metres.
    """

    label: int
    depth: float
    cx: float
    cy: float
    radius: float
    angle: float
    hole: float
    size_m: float

    def extent(self) -> tuple[float, float]:
        """Half width and half height of the axis-aligned box around the whole shape."""
        if self.label in (1, 4):
            return self.radius, self.radius
        corners = self._corners()
        return float(np.abs(corners[:, 0]).max()), float(np.abs(corners[:, 1]).max())

    def _corners(self) -> np.ndarray:
        """Polygon vertices relative to the centre (squares and triangles)."""
        if self.label == 2:
            start = math.pi / 4.0
            angles = start + np.arange(4) * (math.pi / 2.0)
        else:  # triangle, one vertex up when angle is 0
            angles = -math.pi / 2.0 + np.arange(3) * (2.0 * math.pi / 3.0)
        angles = angles + self.angle
        return self.radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether each point (pixel centre) ``(x, y)`` lies inside the shape (broadcasting)."""
        dx = x - self.cx
        dy = y - self.cy
        if self.label in (1, 4):
            r2 = dx * dx + dy * dy
            outer = r2 <= self.radius**2
            if self.label == 1:
                return outer
            return outer & (r2 >= (self.hole * self.radius) ** 2)
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        u = cos * dx + sin * dy  # the point in the shape's own frame
        v = -sin * dx + cos * dy
        if self.label == 2:
            half = self.radius / math.sqrt(2.0)
            return (np.abs(u) <= half) & (np.abs(v) <= half)
        # equilateral triangle: inside the three half-planes at the inradius (radius / 2)
        inner = self.radius / 2.0
        result = v <= inner
        for normal in (math.pi / 2.0 + 2.0 * math.pi / 3.0, math.pi / 2.0 + 4.0 * math.pi / 3.0):
            result = result & (math.cos(normal) * u + math.sin(normal) * v <= inner)
        return result

    def window(self, height: int, width: int) -> tuple[slice, slice]:
        """The rows and columns of the image that can hold the shape's pixels."""
        ex, ey = self.extent()
        # one pixel of margin either side, so rounding in ``inside`` can never reach past it
        rows = slice(max(0, math.floor(self.cy - ey) - 1), min(height, math.ceil(self.cy + ey) + 2))
        cols = slice(max(0, math.floor(self.cx - ex) - 1), min(width, math.ceil(self.cx + ex) + 2))
        return rows, cols

    def footprint(self, height: int, width: int) -> np.ndarray:
        """bool [height, width]: the pixels the whole shape covers, occluded or not."""
        result = np.zeros((height, width), dtype=bool)
        rows, cols = self.window(height, width)
        y = np.arange(rows.start, rows.stop, dtype=np.float64)[:, None]
        x = np.arange(cols.start, cols.stop, dtype=np.float64)[None, :]
        result[rows, cols] = self.inside(x, y)
        return result


@dataclass(frozen=True)
class BackgroundCrop:
    """Where a scene's backdrop comes from: the square ``[top, top + side) x [left, left +
    side)`` of photo ``photo`` (a name from ``background_names``), mirrored when ``flipped``."""

    photo: str
    top: int
    left: int
    side: int
    flipped: bool


@dataclass(frozen=True)
class Scene:
    """One generated scene.

    ``image`` float32 [3, H, W] in [0, 1]; ``boxes`` float32 [N, 4] xyxy in pixels (tight box
    of visible pixels, see the module docstring); ``labels`` int64 [N], class ids 1..4;
    ``mask`` int64 [H, W], 0 = backdrop, else the class id of the visible object; ``depth``
    float32 [H, W], metres; ``instances`` int64 [H, W], 0 = backdrop, ``k`` = ``objects[k -
    1]``; ``objects``: every painted object, far to near (the painting order); ``kept`` int64
    [N]: the index in ``objects`` of each box; ``visible`` float32 [len(objects)]: the visible
    fraction of each object's footprint; ``source``: the backdrop's photo crop.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    instances: np.ndarray
    objects: tuple[SceneObject, ...]
    kept: np.ndarray
    visible: np.ndarray
    source: BackgroundCrop


# ------------------------------------------------------------------------------------ photos


def _import(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _rgb(array: Any) -> np.ndarray:
    image = np.asarray(array)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    image.setflags(write=False)
    return image


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[tuple[str, np.ndarray], ...]:
    """(name, read-only RGB uint8 photo) of every photograph that loads, in a fixed order."""
    found: list[tuple[str, np.ndarray]] = []
    skimage_data = _import("skimage.data")
    if skimage_data is not None:
        loaders = {
            "astronaut": lambda: skimage_data.astronaut(),
            "camera": lambda: skimage_data.camera(),
            "chelsea": lambda: skimage_data.chelsea(),
            "coffee": lambda: skimage_data.coffee(),
            "rocket": lambda: skimage_data.rocket(),
            "motorcycle": lambda: skimage_data.stereo_motorcycle()[0],
        }
        for name, load in loaders.items():
            try:  # a data file that a slim install left out is skipped, not fatal
                found.append((name, _rgb(load())))
            except Exception:
                continue
    sklearn_datasets = _import("sklearn.datasets")
    if sklearn_datasets is not None:
        try:
            bunch = sklearn_datasets.load_sample_images()
        except Exception:  # load_sample_images needs pillow and its two JPEG files
            bunch = None
        if bunch is not None:
            for filename, image in zip(bunch.filenames, bunch.images, strict=True):
                stem = str(filename).replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
                found.append((stem, _rgb(image)))
    if not found:
        raise DataError(
            "the generated scenes need real photographs from scikit-image or scikit-learn, and "
            "neither is importable (or neither holds its sample images); install them with pip "
            "install 'prunekit[data]' (scikit-image, scikit-learn)"
        )
    return tuple(found)


def backgrounds() -> list[np.ndarray]:
    """The real photographs the scenes are drawn over: RGB uint8 [H, W, 3] arrays (copies),
    loaded offline from scikit-image (astronaut, camera, chelsea, coffee, rocket, motorcycle)
    and scikit-learn (china, flower), whichever is installed; the order of
    ``background_names``. Raises ``DataError`` naming both packages when neither is."""
    return [image.copy() for _, image in _photos()]


def background_names() -> list[str]:
    """The names of the photographs ``backgrounds`` returns, in the same order."""
    return [name for name, _ in _photos()]


def split_columns(width: int, height: int, split: str) -> tuple[int, int]:
    """The columns ``[start, stop)`` of a ``height x width`` photo that ``split`` may use:
    ``fit`` left of the cut at ``width - min(height, width) // 2``, ``eval`` right of it."""
    _check_split(split)
    cut = width - min(height, width) // 2
    return (0, cut) if split == "fit" else (cut, width)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown scene split {split!r}; use 'fit' or 'eval'")


def _crop(
    rng: np.random.Generator, photo: np.ndarray, split: str, fraction: tuple[float, float]
) -> tuple[np.ndarray, int, int, int]:
    """A random square crop (pixels, top, left, side) of ``photo`` inside ``split``'s columns."""
    height, width = photo.shape[:2]
    start, stop = split_columns(width, height, split)
    side = int(rng.uniform(*fraction) * min(height, width))
    side = max(1, min(side, stop - start, height))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(start, stop - side + 1))
    return photo[top : top + side, left : left + side], top, left, side


def _resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """RGB uint8 pixels resized (bilinear) to ``height x width``, as float32 in [0, 1]."""
    resized = Image.fromarray(np.ascontiguousarray(pixels)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32) * np.float32(1.0 / 255.0)


# ------------------------------------------------------------------------------------ scenes


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.05, 0.95, size=3).astype(np.float32)


def _texture(
    rng: np.random.Generator,
    photos: tuple[tuple[str, np.ndarray], ...],
    split: str,
    rows: slice,
    cols: slice,
    scale: float,
) -> np.ndarray:
    """float32 [h, w, 3] fill for an object's window: flat shaded, stripes, or a photo patch."""
    height, width = rows.stop - rows.start, cols.stop - cols.start
    y = np.arange(height, dtype=np.float32)[:, None, None]
    x = np.arange(width, dtype=np.float32)[None, :, None]
    kind = int(rng.integers(3))
    if kind == 0:  # one colour, lit from one side
        phi = rng.uniform(0.0, 2.0 * math.pi)
        slope = np.float32(rng.uniform(0.0, 0.6) / max(scale, 1.0))
        ramp = (x - width / 2.0) * np.float32(math.cos(phi)) + (y - height / 2.0) * np.float32(
            math.sin(phi)
        )
        fill = _colour(rng) * (1.0 + slope * ramp)
    elif kind == 1:  # two-colour stripes
        phi = rng.uniform(0.0, math.pi)
        period = np.float32(rng.uniform(3.0, 10.0))
        phase = np.float32(rng.uniform(0.0, 2.0))
        t = (x * np.float32(math.cos(phi)) + y * np.float32(math.sin(phi))) / period + phase
        fill = np.where(np.floor(t) % 2 == 0, _colour(rng), _colour(rng))
    else:  # a tinted patch of a photograph (from the same split's regions)
        _, photo = photos[int(rng.integers(len(photos)))]
        patch, _, _, _ = _crop(rng, photo, split, (0.1, 0.3))
        tint = _colour(rng)
        tint = tint / max(float(tint.max()), 1e-3)
        fill = _resize(patch, width, height) * tint * np.float32(rng.uniform(0.8, 1.4))
    return np.clip(np.broadcast_to(fill, (height, width, 3)), 0.0, 1.0).astype(np.float32)


def _place(
    rng: np.random.Generator, size: int, horizon: float, camera_height: float
) -> SceneObject:
    label = int(rng.integers(1, len(CLASSES)))
    depth = float(rng.uniform(*OBJECT_DEPTH))
    size_m = float(rng.uniform(*OBJECT_SIZE))
    focal = FOCAL * size
    radius = focal * (size_m / 2.0) / depth * _CIRCUMRADIUS[label]
    hole = float(rng.uniform(*_RING_HOLE)) if label == 4 else 0.0
    angle = float(rng.uniform(0.0, 2.0 * math.pi)) if label in (2, 3) else 0.0
    probe = SceneObject(label, depth, 0.0, 0.0, radius, angle, hole, size_m)
    ex, ey = probe.extent()
    ground = horizon + focal * camera_height / depth + rng.normal(0.0, _GROUND_JITTER * size)
    low, high = ey, size - 1 - ey
    cy = float(np.clip(ground - ey, low, max(low, high)))
    cx = float(rng.uniform(ex, max(ex, size - 1 - ex)))
    return SceneObject(label, depth, cx, cy, radius, angle, hole, size_m)


def make_scene(
    rng: np.random.Generator, size: int = 160, max_objects: int = 4, *, split: str = "fit"
) -> Scene:
    """Draw one ``size x size`` scene with 1..``max_objects`` objects (0 when ``max_objects`` is
    0) over a crop of one of ``split``'s photo regions; everything random comes from ``rng``.

    The nearest object is never occluded, so a scene with objects lists at least one box.
    """
    _check_split(split)
    if isinstance(size, bool) or not isinstance(size, int) or size < _MIN_SIZE:
        raise InvalidValueError(f"size must be an int of at least {_MIN_SIZE}, got {size!r}")
    if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 0:
        raise InvalidValueError(f"max_objects must be an int >= 0, got {max_objects!r}")
    photos = _photos()

    # the backdrop: a photo crop on a tilted plane
    index = int(rng.integers(len(photos)))
    name, photo = photos[index]
    pixels, top, left, side = _crop(rng, photo, split, _CROP_FRACTION)
    flipped = bool(rng.random() < 0.5)
    if flipped:
        pixels = pixels[:, ::-1]
    image = _resize(pixels, size, size)
    near = rng.uniform(*BACKDROP_BOTTOM)
    far = rng.uniform(*BACKDROP_TOP)
    rows = np.arange(size, dtype=np.float64) / (size - 1)
    column = 1.0 / (1.0 / far + (1.0 / near - 1.0 / far) * rows)
    depth = np.repeat(column.astype(np.float32)[:, None], size, axis=1)
    mask = np.zeros((size, size), dtype=np.int64)
    instances = np.zeros((size, size), dtype=np.int64)

    # the objects, painted far to near
    horizon = rng.uniform(*HORIZON) * size
    camera_height = rng.uniform(*CAMERA_HEIGHT)
    count = int(rng.integers(1, max_objects + 1)) if max_objects > 0 else 0
    drawn = [_place(rng, size, horizon, camera_height) for _ in range(count)]
    objects = tuple(sorted(drawn, key=lambda o: -o.depth))
    areas = np.zeros(len(objects), dtype=np.int64)
    windows = []
    for k, obj in enumerate(objects, start=1):
        win_rows, win_cols = obj.window(size, size)
        y = np.arange(win_rows.start, win_rows.stop, dtype=np.float64)[:, None]
        x = np.arange(win_cols.start, win_cols.stop, dtype=np.float64)[None, :]
        inside = obj.inside(x, y)
        areas[k - 1] = int(inside.sum())
        windows.append((win_rows, win_cols))
        fill = _texture(rng, photos, split, win_rows, win_cols, obj.radius)
        image[win_rows, win_cols][inside] = fill[inside]
        mask[win_rows, win_cols][inside] = obj.label
        depth[win_rows, win_cols][inside] = np.float32(obj.depth)
        instances[win_rows, win_cols][inside] = k

    # what stays visible: boxes of the objects that are still detectable
    visible = np.zeros(len(objects), dtype=np.float32)
    boxes: list[list[float]] = []
    labels: list[int] = []
    kept: list[int] = []
    for k, (obj, (win_rows, win_cols)) in enumerate(zip(objects, windows, strict=True), start=1):
        ys, xs = np.nonzero(instances[win_rows, win_cols] == k)
        visible[k - 1] = len(ys) / areas[k - 1] if areas[k - 1] else 0.0
        if len(ys) == 0 or visible[k - 1] < MIN_VISIBLE:
            continue
        x0, y0 = win_cols.start, win_rows.start
        boxes.append([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1.0, y0 + ys.max() + 1.0])
        labels.append(obj.label)
        kept.append(k - 1)

    # the camera: a random gain and a little sensor noise
    gain = np.float32(rng.uniform(0.85, 1.15))
    noise = rng.normal(0.0, rng.uniform(0.0, 0.02), size=image.shape).astype(np.float32)
    image = np.clip(image * gain + noise, 0.0, 1.0)
    return Scene(
        image=np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        mask=mask,
        depth=depth,
        instances=instances,
        objects=objects,
        kept=np.asarray(kept, dtype=np.int64),
        visible=visible,
        source=BackgroundCrop(name, top, left, side, flipped),
    )


# ----------------------------------------------------------------------------------- dataset

Target = dict[str, torch.Tensor]


class SceneSet(Dataset[tuple[torch.Tensor, Target]]):
    """``n`` generated scenes of one split, the same every time.

    Item ``i`` is ``make_scene`` with a generator seeded from ``(seed, split, i)`` alone, so it
    does not depend on which items were read before, in which order, or in which worker.
    ``split``: ``fit`` or ``eval``, which use disjoint column ranges of every photograph (see
    ``split_columns``). ``__getitem__`` returns ``(image, target)``: image float32 [3, H, W] in
    [0, 1]; target ``{"boxes": float32 [N, 4] xyxy, "labels": int64 [N], "masks": int64 [H, W]
    (the semantic mask, not torchvision Mask R-CNN's per-instance masks), "depth": float32
    [H, W] metres}``. ``scene(i)`` gives the whole ``Scene`` (instances, objects, source).
    """

    def __init__(
        self, n: int, seed: int, size: int = 160, split: str = "fit", max_objects: int = 4
    ) -> None:
        for name, value in (("n", n), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidValueError(f"{name} must be an int >= 0, got {value!r}")
        _check_split(split)
        if isinstance(size, bool) or not isinstance(size, int) or size < _MIN_SIZE:
            raise InvalidValueError(f"size must be an int of at least {_MIN_SIZE}, got {size!r}")
        if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 0:
            raise InvalidValueError(f"max_objects must be an int >= 0, got {max_objects!r}")
        _photos()  # a missing package fails here, not in a DataLoader worker
        self.n = n
        self.seed = seed
        self.size = size
        self.split = split
        self.max_objects = max_objects

    def __len__(self) -> int:
        return self.n

    def _index(self, index: int) -> int:
        position = int(index)
        if position < 0:
            position += self.n
        if not 0 <= position < self.n:
            raise IndexError(f"scene {index} out of range for a SceneSet of {self.n}")
        return position

    def rng(self, index: int) -> np.random.Generator:
        """The generator that draws item ``index``."""
        position = self._index(index)
        entropy = [_SEED_DOMAIN, self.seed, _SPLIT_CODE[self.split], position]
        return np.random.default_rng(np.random.SeedSequence(entropy))

    def scene(self, index: int) -> Scene:
        """The whole ``Scene`` of item ``index``."""
        return make_scene(self.rng(index), self.size, self.max_objects, split=self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        scene = self.scene(index)
        target = {
            "boxes": torch.from_numpy(scene.boxes),
            "labels": torch.from_numpy(scene.labels),
            "masks": torch.from_numpy(scene.mask),
            "depth": torch.from_numpy(scene.depth),
        }
        return torch.from_numpy(scene.image), target


class SceneMasks(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A ``SceneSet`` seen as semantic segmentation data: item ``i`` is ``(image, mask)`` of
    scene ``i`` (image float32 [3, H, W] in [0, 1], mask int64 [H, W] with ``CLASSES`` ids:
    0 = backdrop, 1..4 = the visible object's class), the item format of a segmentation
    folder. ``scenes`` is the underlying ``SceneSet`` (its ``scene(i)`` gives the rest)."""

    def __init__(self, scenes: SceneSet) -> None:
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        scene = self.scenes.scene(index)
        return torch.from_numpy(scene.image), torch.from_numpy(scene.mask)


def collate_scenes(
    batch: list[tuple[torch.Tensor, Target]],
) -> tuple[torch.Tensor, list[Target]]:
    """For a ``DataLoader`` over a ``SceneSet``: images stacked [B, 3, H, W], targets a list
    (boxes differ in count from image to image)."""
    images = torch.stack([image for image, _ in batch])
    return images, [target for _, target in batch]
