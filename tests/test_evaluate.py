"""evaluate_classification against hand-computed accuracy and cross-entropy."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from prunekit.errors import DataError
from prunekit.evaluate import ClassificationMetrics, evaluate_classification

# Six samples, seven classes, no ties. The comment gives the rank of the true label.
LOGITS = torch.tensor(
    [
        [5.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # label 0: rank 1
        [0.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1],  # label 2: rank 2
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 4: rank 5
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 5: rank 6
        [3.0, 2.0, 1.0, 0.0, 4.0, 5.0, 6.0],  # label 3: rank 7
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 9.0],  # label 6: rank 1
    ]
)
LABELS = torch.tensor([0, 2, 4, 5, 3, 6])


def reference_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy written out: log(sum(exp(logits))) - logit of the true class."""
    total = 0.0
    for row, label in zip(logits.tolist(), labels.tolist(), strict=True):
        total += math.log(sum(math.exp(v) for v in row)) - row[label]
    return total / len(labels)


class LookupModel(nn.Module):
    """Returns the stored logits row whose index is the input value."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        assert not self.training, "evaluation must run in eval mode"
        assert torch.is_inference_mode_enabled()
        return self.table[index.long()] * self.scale


class FailingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def batches(size: int, count: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    indices = torch.arange(count if count is not None else len(LABELS))
    return [
        (indices[i : i + size], LABELS[indices[i : i + size]]) for i in range(0, len(indices), size)
    ]


@pytest.mark.parametrize("batch_size", [1, 2, 4, 6])
def test_golden_topk_and_loss(batch_size: int) -> None:
    metrics = evaluate_classification(LookupModel(LOGITS), batches(batch_size), topk=(1, 2, 5))
    assert metrics.n == 6
    assert metrics.num_classes == 7
    assert metrics.topk == {1: 2 / 6, 2: 3 / 6, 5: 4 / 6}
    assert metrics.top1 == 2 / 6
    assert metrics.top5 == 4 / 6
    assert metrics.loss == pytest.approx(reference_loss(LOGITS, LABELS), rel=1e-6)
    # Spot check of the oracle itself: uniform logits over 7 classes cost exactly log(7).
    assert reference_loss(torch.zeros(1, 7), torch.tensor([3])) == pytest.approx(math.log(7))


def test_top1_is_always_measured_and_top5_is_none_when_not_requested() -> None:
    metrics = evaluate_classification(LookupModel(LOGITS), batches(3), topk=(3,))
    assert metrics.topk == {1: 2 / 6, 3: 3 / 6}
    assert metrics.top5 is None


def test_to_dict_is_plain_json() -> None:
    metrics = evaluate_classification(LookupModel(LOGITS), batches(3))
    as_dict = metrics.to_dict()
    assert as_dict == {
        "n": 6,
        "num_classes": 7,
        "loss": metrics.loss,
        "top1": 2 / 6,
        "top5": 4 / 6,
    }
    assert json.loads(json.dumps(as_dict)) == as_dict


def test_k_is_clamped_to_number_of_classes() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    labels = torch.tensor([2, 2])
    metrics = evaluate_classification(
        LookupModel(logits), [(torch.arange(2), labels)], topk=(1, 5, 10)
    )
    assert metrics.num_classes == 3
    assert metrics.topk == {1: 0.5, 3: 1.0}
    assert metrics.top5 is None


def test_max_batches_limits_samples() -> None:
    metrics = evaluate_classification(LookupModel(LOGITS), batches(2), max_batches=2)
    assert metrics.n == 4
    assert metrics.top1 == 1 / 4  # only sample 0 is top-1 correct among samples 0..3
    assert metrics.topk[5] == 3 / 4
    assert metrics.loss == pytest.approx(reference_loss(LOGITS[:4], LABELS[:4]), rel=1e-6)


def test_max_batches_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batches"):
        evaluate_classification(LookupModel(LOGITS), batches(2), max_batches=0)


def test_works_with_a_real_data_loader() -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(6), LABELS)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    metrics = evaluate_classification(LookupModel(LOGITS), loader)
    assert (metrics.n, metrics.top1, metrics.top5) == (6, 2 / 6, 4 / 6)


def test_mode_is_restored_per_module() -> None:
    model = nn.Sequential(LookupModel(LOGITS))
    model.train()
    evaluate_classification(model, batches(6))
    assert model.training and model[0].training

    model.eval()
    evaluate_classification(model, batches(6))
    assert not model.training and not model[0].training

    # Mixed modes (e.g. a frozen sub-module kept in eval) come back exactly as they were.
    model.train()
    model[0].eval()
    evaluate_classification(model, batches(6))
    assert model.training
    assert not model[0].training


def test_mode_is_restored_when_the_model_raises() -> None:
    model = FailingModel()
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_classification(model, [(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))])
    assert model.training and model.layer.training


def test_mode_is_restored_after_data_errors() -> None:
    model = LookupModel(LOGITS)
    model.train()
    with pytest.raises(DataError):
        evaluate_classification(model, [])
    assert model.training


def test_empty_loader_raises_data_error() -> None:
    with pytest.raises(DataError, match="yielded no samples"):
        evaluate_classification(LookupModel(LOGITS), [])


@pytest.mark.parametrize("shape", [(2,), (2, 3, 4)])
def test_logits_that_are_not_2d_raise_data_error(shape: tuple[int, ...]) -> None:
    model = LookupModel(torch.zeros((2, *shape[1:])) if len(shape) > 1 else torch.zeros(2))
    with pytest.raises(
        DataError, match=r"expected classification logits of shape \[batch, num_classes\]"
    ):
        evaluate_classification(model, [(torch.arange(2), torch.tensor([0, 1]))])


def test_labels_out_of_range_raise_data_error() -> None:
    with pytest.raises(DataError, match="labels range from 0 to 7 but the model has 7 classes"):
        evaluate_classification(LookupModel(LOGITS), [(torch.arange(2), torch.tensor([0, 7]))])


def test_batch_that_is_not_a_pair_raises_data_error() -> None:
    with pytest.raises(DataError, match=r"expected an \(inputs, labels\) pair"):
        evaluate_classification(LookupModel(LOGITS), [torch.arange(2)])


def test_device_defaults_to_cpu_for_models_without_parameters() -> None:
    class NoParams(nn.Module):
        def forward(self, index: torch.Tensor) -> torch.Tensor:
            assert index.device.type == "cpu"
            return LOGITS[index]

    metrics = evaluate_classification(NoParams(), batches(6), device=None)
    assert isinstance(metrics, ClassificationMetrics)
    assert metrics.top1 == 2 / 6
