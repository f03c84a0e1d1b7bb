"""Task metrics of pipeline stages (``prunekit.evaluate.tasks``): golden values on models whose
outputs are known, label checks that name what is missing, the ``scenes`` data spec."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from prunekit.errors import DataError
from prunekit.evaluate.tasks import TaskDrop, check_labels, task_metric


def _mask(i: int) -> torch.Tensor:
    mask = torch.zeros(8, 8, dtype=torch.int64)
    mask[: 2 + i, :4] = 1
    mask[6:, 6:] = 2
    return mask


class Oracle(nn.Module):
    """Returns, for the i-th image (its first pixel holds i), what the test asks of it."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make

    def forward(self, images: torch.Tensor) -> Any:
        return self.make([int(v) for v in images[:, 0, 0, 0]])


def _items(targets: list[Any]) -> list[tuple[torch.Tensor, Any]]:
    items = []
    for i, target in enumerate(targets):
        image = torch.zeros(3, 8, 8)
        image[0, 0, 0] = i
        items.append((image, target))
    return items


def test_miou_is_one_for_the_truth_and_known_for_a_constant() -> None:
    items = _items([_mask(i) for i in range(3)])
    onehot = Oracle(lambda ids: nn.functional.one_hot(
        torch.stack([_mask(i) for i in ids]), 3).permute(0, 3, 1, 2).float())  # fmt: skip
    miou = task_metric("miou")
    assert miou.score(onehot, items, 2) == pytest.approx(1.0)
    background = Oracle(lambda ids: torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1).expand(
        len(ids), 3, 8, 8))  # fmt: skip
    truth = torch.stack([_mask(i) for i in range(3)])
    # only class 0 is ever predicted: IoU(0) = its pixels / all pixels, IoU(1) = IoU(2) = 0
    expected = float((truth == 0).sum()) / truth.numel() / 3
    assert miou.score(background, items, 2) == pytest.approx(expected)
    # dict targets (the scene set's) read the same
    assert miou.score(onehot, _items([{"masks": _mask(i)} for i in range(3)]), 3) == (
        pytest.approx(1.0))  # fmt: skip


def test_absrel_is_the_relative_error_and_lower_is_better() -> None:
    depth = [torch.full((8, 8), 2.0 + i) for i in range(4)]
    items = _items([{"depth": d} for d in depth])
    model = Oracle(lambda ids: torch.stack([depth[i] * 1.1 for i in ids]).unsqueeze(1))
    absrel = task_metric("absrel")
    assert absrel.score(model, items, 3) == pytest.approx(0.1)
    assert not absrel.higher_is_better and absrel.loss(0.1, 0.15) == pytest.approx(0.05)
    assert task_metric("miou").loss(0.8, 0.75) == pytest.approx(0.05)


def test_map_reads_detections_or_decodes_them() -> None:
    boxes = [torch.tensor([[1.0, 1, 5, 5]]), torch.tensor([[0.0, 0, 4, 3], [4, 4, 8, 8]])]
    labels = [torch.tensor([1]), torch.tensor([2, 1])]
    targets = [{"boxes": b, "labels": la} for b, la in zip(boxes, labels, strict=True)]
    items = _items(targets)

    def perfect(ids: list[int]) -> list[dict[str, torch.Tensor]]:
        return [{**targets[i], "scores": torch.ones(len(labels[i]))} for i in ids]

    metric = task_metric("map")
    assert metric.score(Oracle(perfect), items, 2) == pytest.approx(1.0)

    class Decoding(Oracle):
        def decode(self, output: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            # class 2's box is missed: AP(1) = 1, AP(2) = 0
            return [{"boxes": boxes[i][labels[i] == 1], "labels": labels[i][labels[i] == 1],
                     "scores": torch.ones(1)} for i in output.tolist()]  # fmt: skip

    assert metric.score(Decoding(lambda ids: torch.tensor(ids)), items, 2) == pytest.approx(0.5)
    with pytest.raises(DataError, match="has no decode"):
        metric.score(Oracle(lambda ids: torch.zeros(len(ids), 4)), items, 2)


def test_task_drop_is_the_metric_loss_against_the_dense_model() -> None:
    depth = [torch.full((8, 8), 3.0)]
    items = _items([{"depth": d} for d in depth])
    scale = {"value": 1.0}
    model = Oracle(lambda ids: torch.full((len(ids), 1, 8, 8), 3.0 * scale["value"]))
    drop = TaskDrop(task_metric("absrel"), model, items)
    assert drop.dense == pytest.approx(0.0) and drop.name == "absrel_drop"
    scale["value"] = 1.2
    assert drop(model) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("metric", "target", "message"),
    [
        ("miou", 3, "needs segmentation masks; the data d gives class labels"),
        ("absrel", {"masks": torch.zeros(2, 2)}, "needs depth maps; the data d gives targets"),
        ("map", {"boxes": torch.zeros(0, 4)}, "needs boxes and labels per image"),
    ],
)
def test_a_metric_without_its_labels_is_named(metric: str, target: Any, message: str) -> None:
    with pytest.raises(DataError, match=message):
        check_labels(task_metric(metric), target, "d")


def test_a_metric_in_a_module_runs_only_when_trusted() -> None:
    with pytest.raises(DataError, match="trust_code: true"):
        task_metric("os.path:exists")
    with pytest.raises(DataError, match="unknown metric 'top5'"):
        task_metric("top5")
    custom = task_metric("tests.test_evaluate_tasks:_first_pixel_mean", trust_code=True)
    assert not custom.higher_is_better
    assert custom.score(nn.Identity(), _items([0, 0]), 1) == pytest.approx(0.5)


def _first_pixel_mean(model: nn.Module, items: Any, batch_size: int) -> float:
    return float(torch.stack([x for x, _ in items])[:, 0, 0, 0].mean())


_first_pixel_mean.higher_is_better = False  # type: ignore[attr-defined]


def test_the_scenes_spec_gives_labelled_disjoint_splits() -> None:
    from prunekit.data.specs import load_data

    data = load_data("scenes:6,3", image_size=48)
    assert (len(data.fit), len(data.eval), data.task) == (6, 3, "perception")
    image, target = data.eval[0]
    assert image.shape == (3, 48, 48) and set(target) == {"boxes", "labels", "masks", "depth"}
    for metric in ("map", "miou", "absrel"):
        check_labels(task_metric(metric), target, "scenes")
    fit_images = torch.stack([data.fit[i][0] for i in range(6)])
    assert not any(bool((fit_images == data.eval[i][0]).all(-1).all(-1).all(-1).any())
                   for i in range(3))  # fmt: skip
    with pytest.raises(DataError, match="expected scenes:FIT,EVAL"):
        load_data("scenes:many")


def test_first_tensor_is_the_one_rule_for_model_outputs() -> None:
    from types import SimpleNamespace

    from prunekit._tensors import first_tensor

    a, b = torch.zeros(1), torch.ones(1)
    assert first_tensor(a) is a
    assert first_tensor({"out": a, "aux": b}) is a
    assert first_tensor(([], (a, b))) is a  # depth first, skipping what holds no tensor
    assert first_tensor({"hidden": a, "logits": b}) is b  # a classifier's logits win
    assert first_tensor(SimpleNamespace(last_hidden_state=b)) is b
    assert first_tensor({"n": 3}) is None and first_tensor("text") is None
