"""Generated scenes (prunekit.data.scenes): determinism, held-out photo regions, exact labels."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from prunekit.data import scenes
from prunekit.data.scenes import (
    CLASSES,
    FOCAL,
    MIN_VISIBLE,
    OBJECT_DEPTH,
    Scene,
    SceneSet,
    background_names,
    backgrounds,
    collate_scenes,
    make_scene,
    split_columns,
)
from prunekit.errors import DataError, InvalidValueError

pytest.importorskip("skimage")

SIZE = 96  # small scenes keep the exhaustive checks fast; the geometry is the same at 160


def _scenes(count: int, seed: int, split: str = "fit", size: int = SIZE) -> list[Scene]:
    dataset = SceneSet(count, seed=seed, size=size, split=split)
    return [dataset.scene(i) for i in range(count)]


@pytest.fixture(scope="module")
def many() -> list[Scene]:
    return _scenes(40, seed=7) + _scenes(40, seed=7, split="eval")


def test_backgrounds_are_real_rgb_photographs() -> None:
    photos = backgrounds()
    names = background_names()
    assert len(photos) == len(names) >= 2
    assert len(set(names)) == len(names)
    for photo in photos:
        assert photo.dtype == np.uint8
        assert photo.ndim == 3
        assert photo.shape[2] == 3
        assert min(photo.shape[:2]) >= 256
        assert photo.std() > 20  # a picture, not a flat fill
    photos[0][...] = 0  # copies: the cache is untouched
    assert backgrounds()[0].std() > 20


def test_missing_packages_raise_a_data_error_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    scenes._photos.cache_clear()
    for name in ("skimage", "skimage.data", "sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    try:
        with pytest.raises(DataError, match=r"scikit-image.*scikit-learn"):
            backgrounds()
        with pytest.raises(DataError, match="scikit-image"):
            SceneSet(4, seed=0)
    finally:
        monkeypatch.undo()
        scenes._photos.cache_clear()
    assert backgrounds()


def test_items_are_deterministic_and_distinct() -> None:
    first = SceneSet(6, seed=3, size=SIZE)
    again = SceneSet(6, seed=3, size=SIZE)
    for i in (0, 5, 2):
        image_a, target_a = first[i]
        image_b, target_b = again[i]
        assert torch.equal(image_a, image_b)
        assert target_a.keys() == target_b.keys() == {"boxes", "labels", "masks", "depth"}
        for key in target_a:
            assert torch.equal(target_a[key], target_b[key])
    assert torch.equal(first[-1][0], first[5][0])
    images = [first[i][0] for i in range(6)]
    for i in range(6):
        for j in range(i + 1, 6):
            assert not torch.equal(images[i], images[j])
    assert not torch.equal(SceneSet(1, seed=4, size=SIZE)[0][0], images[0])
    assert not torch.equal(SceneSet(1, seed=3, size=SIZE, split="eval")[0][0], images[0])
    with pytest.raises(IndexError):
        first[6]


def test_fit_and_eval_use_disjoint_columns_of_every_photo() -> None:
    shapes = dict(zip(background_names(), (p.shape for p in backgrounds()), strict=True))
    crops: dict[str, list[tuple[int, int]]] = {"fit": [], "eval": []}
    photos_seen: dict[str, set[str]] = {"fit": set(), "eval": set()}
    for split in ("fit", "eval"):
        for scene in _scenes(60, seed=11, split=split, size=48):
            source = scene.source
            height, width = shapes[source.photo][:2]
            start, stop = split_columns(width, height, split)
            assert start <= source.left
            assert source.left + source.side <= stop
            assert source.top + source.side <= height
            photos_seen[split].add(source.photo)
            crops[split].append((source.left, source.left + source.side))
    # both splits draw from (nearly) every photo: the hold-out is by region, not by photo
    assert len(photos_seen["fit"] & photos_seen["eval"]) >= len(shapes) - 1
    for width, height in ((512, 512), (640, 427), (451, 300)):
        fit, held = split_columns(width, height, "fit"), split_columns(width, height, "eval")
        assert fit[0] == 0
        assert fit[1] == held[0] < held[1] == width
    with pytest.raises(DataError, match="split"):
        split_columns(10, 10, "test")


def test_boxes_are_tight_boxes_of_visible_pixels(many: list[Scene]) -> None:
    listed = 0
    for scene in many:
        for box, label, k in zip(scene.boxes, scene.labels, scene.kept, strict=True):
            obj = scene.objects[k]
            assert label == obj.label
            ys, xs = np.nonzero(scene.instances == k + 1)
            expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            np.testing.assert_array_equal(box, np.asarray(expected, dtype=np.float32))
            assert (scene.mask[ys, xs] == label).all()
            assert (scene.depth[ys, xs] == np.float32(obj.depth)).all()
            assert scene.visible[k] >= MIN_VISIBLE
            listed += 1
        # objects left out are the mostly hidden ones, and their pixels are still labelled
        for k, obj in enumerate(scene.objects):
            if k in scene.kept:
                continue
            assert scene.visible[k] < MIN_VISIBLE
            hidden = scene.instances == k + 1
            assert (scene.mask[hidden] == obj.label).all()
            assert (scene.depth[hidden] == np.float32(obj.depth)).all()
        assert len(scene.objects) == 0 or len(scene.kept) >= 1  # the nearest is never hidden
    assert listed > 100


def test_nearer_objects_occlude_farther_ones(many: list[Scene]) -> None:
    overlaps = 0
    for scene in many:
        height, width = scene.mask.shape
        # the scene again, from each object's whole footprint and depth: a z-buffer
        nearest = np.zeros((height, width), dtype=np.int64)
        best = np.full((height, width), np.inf)
        covered = np.zeros((height, width), dtype=np.int64)
        for k, obj in enumerate(scene.objects, start=1):
            foot = obj.footprint(height, width)
            assert foot.sum() > 0
            covered += foot
            closer = foot & (obj.depth < best)
            nearest[closer] = k
            best[closer] = obj.depth
        np.testing.assert_array_equal(scene.instances, nearest)
        assert (scene.mask == 0).sum() == (nearest == 0).sum()
        overlaps += int((covered >= 2).sum())
        for k, obj in enumerate(scene.objects, start=1):
            area = obj.footprint(height, width).sum()
            assert scene.visible[k - 1] == np.float32((nearest == k).sum() / area)
        # far to near: the painting order is by decreasing depth
        depths = [obj.depth for obj in scene.objects]
        assert depths == sorted(depths, reverse=True)
    assert overlaps > 0  # the check above saw real occlusions


def test_maps_are_in_range(many: list[Scene]) -> None:
    for scene in many:
        assert scene.image.dtype == np.float32
        assert scene.image.shape == (3, SIZE, SIZE)
        assert scene.image.min() >= 0.0
        assert scene.image.max() <= 1.0
        assert scene.mask.dtype == np.int64
        assert scene.mask.shape == (SIZE, SIZE)
        assert scene.mask.min() >= 0
        assert scene.mask.max() < len(CLASSES)
        assert scene.depth.dtype == np.float32
        assert np.isfinite(scene.depth).all()
        assert (scene.depth > 0).all()
        assert scene.boxes.dtype == np.float32
        assert scene.boxes.shape == (len(scene.labels), 4)
        assert scene.labels.dtype == np.int64
        assert ((scene.labels >= 1) & (scene.labels < len(CLASSES))).all()
        assert (scene.boxes[:, 2:] > scene.boxes[:, :2]).all()
        assert (scene.boxes >= 0).all()
        assert (scene.boxes <= SIZE).all()
        backdrop = scene.depth[scene.mask == 0]
        objects = scene.depth[scene.mask > 0]
        if backdrop.size and objects.size:
            assert objects.max() < backdrop.min()  # objects always stand before the backdrop
        # the backdrop is a tilted plane: farther towards the top
        column = scene.depth[:, 0][scene.mask[:, 0] == 0]
        assert (np.diff(column) <= 0).all()
        assert objects.min(initial=OBJECT_DEPTH[0]) >= OBJECT_DEPTH[0]


def test_depth_is_learnable_from_size_and_ground_position(many: list[Scene]) -> None:
    inverse, bottom = [], []
    per_metre: dict[int, list[float]] = {}
    for scene in many:
        for obj in scene.objects:
            inverse.append(1.0 / obj.depth)
            bottom.append(obj.cy + obj.extent()[1])
            per_metre.setdefault(obj.label, []).append(obj.radius * obj.depth / obj.size_m)
    # apparent size is FOCAL * side * physical size / depth (a constant per class's shape)
    assert sorted(per_metre) == list(range(1, len(CLASSES)))
    for label, values in per_metre.items():
        np.testing.assert_allclose(values, values[0], rtol=1e-9)
        assert values[0] >= FOCAL * SIZE / 2 - 1e-9, CLASSES[label]
    # and nearer objects stand lower in the image (a ground plane, up to a little jitter)
    assert np.corrcoef(inverse, bottom)[0, 1] > 0.8


def test_classes_are_balanced(many: list[Scene]) -> None:
    counts = np.bincount(np.concatenate([s.labels for s in many]), minlength=len(CLASSES))
    assert counts[0] == 0
    assert counts[1:].min() > 0.5 * counts[1:].mean()


def test_data_loader_batches() -> None:
    dataset = SceneSet(6, seed=0, split="eval")
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate_scenes)
    batches = list(loader)
    assert [images.shape for images, _ in batches] == [(4, 3, 160, 160), (2, 3, 160, 160)]
    images, targets = batches[0]
    assert images.dtype == torch.float32
    assert len(targets) == 4
    for target in targets:
        count = len(target["labels"])
        assert target["boxes"].shape == (count, 4)
        assert target["boxes"].dtype == torch.float32
        assert target["labels"].dtype == torch.int64
        assert target["masks"].shape == (160, 160)
        assert target["masks"].dtype == torch.int64
        assert target["depth"].shape == (160, 160)
        assert target["depth"].dtype == torch.float32


def test_make_scene_arguments() -> None:
    empty = make_scene(np.random.default_rng(0), size=64, max_objects=0)
    assert empty.boxes.shape == (0, 4)
    assert empty.labels.shape == (0,)
    assert (empty.mask == 0).all()
    one = make_scene(np.random.default_rng(0), max_objects=1, split="eval")
    assert one.image.shape == (3, 160, 160)
    assert len(one.labels) == 1
    with pytest.raises(DataError, match="split"):
        make_scene(np.random.default_rng(0), split="train")
    with pytest.raises(InvalidValueError, match="size"):
        make_scene(np.random.default_rng(0), size=8)
    with pytest.raises(InvalidValueError, match="max_objects"):
        SceneSet(4, seed=0, max_objects=-1)
    with pytest.raises(InvalidValueError, match="seed"):
        SceneSet(4, seed=-1)


# --- the scenes-masks data spec: the same scenes as segmentation data ----------------------------


def test_scenes_masks_items_are_the_scenes_images_and_semantic_masks() -> None:
    from prunekit.data.specs import load_data

    data = load_data("scenes-masks:6,4", seed=5, image_size=48)
    assert (data.task, data.kind, data.num_classes) == ("segmentation", "scenes-masks", 5)
    assert data.item_shape == (3, 48, 48)
    assert (len(data.fit), len(data.eval)) == (6, 4)
    assert data.to_dict()["split"] == {
        "seed": 5, "fit": 6, "eval": 4,
        "eval_from": "generated eval scenes (photo regions disjoint from those of the fit scenes)",
    }  # fmt: skip
    for part, split in ((data.fit, "fit"), (data.eval, "eval")):
        scenes_of_split = SceneSet(len(part), seed=5, size=48, split=split)
        for i in range(len(part)):
            image, mask = part[i]
            assert image.dtype == torch.float32
            assert image.shape == (3, 48, 48)
            assert mask.dtype == torch.int64
            assert mask.shape == (48, 48)
            expected_image, target = scenes_of_split[i]
            assert torch.equal(image, expected_image)
            assert torch.equal(mask, target["masks"])
    # golden: the first fit scene's class histogram and a pixel sum, fixed by the seed
    image, mask = data.fit[0]
    scene = data.fit.scenes.scene(0)
    assert np.array_equal(np.bincount(mask.numpy().ravel(), minlength=5),
                          np.bincount(scene.mask.ravel(), minlength=5))  # fmt: skip
    assert int((mask > 0).sum()) > 0
    # the default counts and size
    default = load_data("scenes-masks")
    assert (len(default.fit), len(default.eval), default.item_shape) == (2000, 500, (3, 160, 160))


def test_scenes_masks_fit_and_eval_come_from_disjoint_photo_regions() -> None:
    from prunekit.data.specs import load_data

    data = load_data("scenes-masks:30,30", seed=2, image_size=48)
    shapes = dict(zip(background_names(), (p.shape for p in backgrounds()), strict=True))
    for part, split in ((data.fit, "fit"), (data.eval, "eval")):
        assert part.scenes.split == split
        for i in range(len(part)):
            source = part.scenes.scene(i).source
            height, width = shapes[source.photo][:2]
            start, stop = split_columns(width, height, split)
            assert start <= source.left and source.left + source.side <= stop
    fit_images = {data.fit[i][0].numpy().tobytes() for i in range(len(data.fit))}
    assert not any(data.eval[i][0].numpy().tobytes() in fit_images for i in range(len(data.eval)))


def test_scenes_masks_spec_errors_name_the_spec() -> None:
    from prunekit.data.specs import load_data, parse_spec

    assert parse_spec("scenes-masks") == ("scenes-masks", "")
    assert parse_spec("scenes-masks:10,5") == ("scenes-masks", "10,5")
    with pytest.raises(DataError, match=r"expected scenes-masks:FIT,EVAL"):
        load_data("scenes-masks:many")
    with pytest.raises(DataError, match="at least 1"):
        load_data("scenes-masks:0,5")
    # a model's input too small for the scenes: said in terms of --data and the model
    with pytest.raises(DataError, match=r"--data scenes: scenes are drawn at 32 px or more, and "
                                        r"this model takes 8 px images"):  # fmt: skip
        load_data("scenes", image_size=8)


class _Constant(torch.nn.Module):
    """Predicts class ``label`` at every pixel (logits [B, 5, H, W])."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], len(CLASSES), *x.shape[-2:])
        logits[:, self.label] = self.scale
        return logits


def test_evaluate_scores_dice_on_the_held_out_scenes() -> None:
    import prunekit as pk

    result = pk.evaluate(_Constant(0), "scenes-masks:4,6", example=torch.rand(1, 3, 48, 48))
    assert result["task"] == "segmentation"
    assert result["split"] == "eval"
    assert result["samples"] == 6
    assert result["data"]["spec"] == "scenes-masks:4,6"
    # all-backdrop predictions: Dice of the backdrop 2 TP / (truth + predicted), 0 for every
    # object class that occurs; the mean over the classes that occur
    masks = torch.stack([SceneSet(6, seed=0, size=48, split="eval")[i][1]["masks"]
                         for i in range(6)])  # fmt: skip
    backdrop = int((masks == 0).sum())
    present = len(torch.unique(masks))
    expected = (2 * backdrop / (backdrop + masks.numel())) / present
    assert result["dice"] == pytest.approx(expected)
    assert result["pixel_accuracy"] == pytest.approx(backdrop / masks.numel())


def test_recover_trains_a_segmenter_on_the_fit_scenes() -> None:
    import prunekit as pk
    from prunekit.nn import unet

    torch.manual_seed(0)
    model = unet(width=4, depth=2)
    record: dict[str, object] = {}
    pk.recover_(model, "scenes-masks:16,4", pk.RecoverConfig(epochs=2, lr=0.01, batch_size=8),
                example=torch.rand(1, 3, 32, 32), record=record)  # fmt: skip
    assert record["data"]["task"] == "segmentation"  # type: ignore[index]
    assert record["data"]["split"]["fit"] == 16  # type: ignore[index]
    history = record["history"]
    assert len(history) == 2  # type: ignore[arg-type]
