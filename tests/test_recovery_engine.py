"""The recovery engine (``recovery.finetune``): stops on the clock and by patience, resume in
the middle of an epoch, gradient clipping, mixed precision, pluggable losses, configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.recovery import (
    ClassificationLoss,
    DistillationLoss,
    EmbeddingDistillationLoss,
    FinetuneConfig,
    RecoveryError,
    SegmentationLoss,
    _engine,
    dice_loss,
    finetune,
)
from prunekit.recovery.embedding_distill import relational_loss


def blobs(n: int = 256, seed: int = 1) -> TensorDataset:
    centres = torch.randn(4, 8, generator=torch.Generator().manual_seed(123)) * 3
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    return TensorDataset(centres[y] + torch.randn(n, 8, generator=g), y)


def mlp(seed: int = 0, dropout: float = 0.2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 4))


def loader(seed: int = 5) -> DataLoader:  # 4 steps per epoch, a fresh generator per run
    return DataLoader(blobs(), batch_size=64, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))  # fmt: skip


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class FakeClock:
    """One second passes with every optimizer step (advanced from on_step)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, *_: object) -> None:
        self.now += 1.0


# --- configuration ------------------------------------------------------------------------


def test_config_round_trips_and_refuses_unknown_keys() -> None:
    config = FinetuneConfig(epochs=3, max_seconds=60.0, grad_clip=1.0, amp="off", patience=2)
    assert FinetuneConfig.from_dict(config.to_dict()) == config
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()
    with pytest.raises(RecoveryError, match=r"unknown FinetuneConfig setting\(s\): bogus, lr_x"):
        FinetuneConfig.from_dict({**config.to_dict(), "bogus": 1, "lr_x": 2})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"amp": "fp8"}, "unknown amp 'fp8'"),
        ({"max_seconds": 0}, "max_seconds must be a number > 0"),
        ({"grad_clip": -1.0}, "grad_clip must be a number > 0"),
        ({"patience": 0}, "patience must be a positive integer or None"),
        ({"min_epochs": -1}, "min_epochs must be a non-negative integer"),
        ({"schedule": "cosine_time"}, "set max_seconds too"),
        ({"train_mode": 1}, "train_mode must be True or False"),
    ],
)
def test_bad_settings_are_refused_in_one_line(settings: dict[str, object], message: str) -> None:
    with pytest.raises(RecoveryError, match=message) as info:
        FinetuneConfig(**settings)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_patience_needs_a_validation_metric() -> None:
    with pytest.raises(RecoveryError, match=r"patience .* needs a validation metric"):
        finetune(mlp(), loader(), config=FinetuneConfig(epochs=2, patience=1))


# --- stops --------------------------------------------------------------------------------


def test_the_clock_stops_a_run_mid_epoch_and_the_next_call_continues_it_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = FinetuneConfig(epochs=3, lr=0.05, seed=7)
    reference = mlp(seed=1)
    full = finetune(reference, loader(), config=config)
    assert full.stopped_by == "epochs" and full.steps == 12

    clock = FakeClock()
    monkeypatch.setattr(_engine, "_now", clock)
    budget = FinetuneConfig(epochs=3, lr=0.05, seed=7, max_seconds=5.5)
    calls: list[tuple[int, int]] = []

    def on_step(epoch: int, step: int, loss: float) -> None:
        calls.append((epoch, step))
        clock.tick()

    model = mlp(seed=1)
    messages: list[str] = []
    cut = finetune(model, loader(), config=budget, checkpoint_dir=tmp_path, on_step=on_step,
                   log=messages.append)  # fmt: skip
    assert cut.stopped_by == "time" and cut.steps == 6
    assert calls == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1)]
    assert [h.epoch for h in cut.history] == [1]
    assert "stopped by the time budget (5.5 s) after step 2/4 of epoch 2" in messages[-1]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["position"]["step"] == 2
    torch.rand(50)  # disturb the global RNG between the calls

    calls.clear()
    again = finetune(mlp(seed=9), loader(), config=budget, checkpoint_dir=tmp_path,
                     on_step=on_step)  # fmt: skip
    assert again.resumed and again.stopped_by == "epochs" and again.steps == 6
    assert calls == [(2, 2), (2, 3), (3, 0), (3, 1), (3, 2), (3, 3)]
    assert again.history == full.history  # epoch 2's loss sums its two halves
    assert again.history[1].steps == 4


def test_a_time_budget_on_the_real_clock_says_it_stopped_the_run() -> None:
    config = FinetuneConfig(epochs=10_000, lr=0.05, max_seconds=0.3)
    result = finetune(mlp(), loader(), config=config)
    assert result.stopped_by == "time"
    assert 0.3 <= result.seconds < 10 and 0 < len(result.history) < 10_000
    record = result.to_dict()
    assert json.loads(json.dumps(record)) == record
    assert record["stopped_by"] == "time" and record["seconds"] == result.seconds
    assert set(record["history"][0]) >= {"epoch", "train_loss", "steps", "lr", "val_loss",
                                         "val_score", "seconds"}  # fmt: skip


def test_cosine_time_decays_to_zero_when_the_clock_ends_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(_engine, "_now", clock)
    rates: list[float] = []
    config = FinetuneConfig(epochs=1000, lr=0.1, schedule="cosine_time", max_seconds=8.0)
    model = mlp()
    model.register_forward_pre_hook(clock.tick)  # a second passes in every forward pass

    original = torch.optim.SGD.step

    def spy(self: torch.optim.SGD, *args: object, **kwargs: object) -> object:
        rates.append(float(self.param_groups[0]["lr"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    result = finetune(model, loader(), config=config)
    assert result.stopped_by == "time" and result.steps == 8
    # lr at step k (k seconds spent): 0.1 * (1 + cos(pi * k / 8)) / 2
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert rates == pytest.approx(expected, rel=1e-4)


def test_early_stopping_stops_after_patience_epochs_and_keeps_the_best(tmp_path: Path) -> None:
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.95])
    seen: list[dict[str, torch.Tensor]] = []

    def evaluate(model: nn.Module) -> float:
        seen.append(weights(model))
        return next(scores)

    config = FinetuneConfig(epochs=6, lr=0.05, patience=2, max_steps_per_epoch=2)
    model = mlp()
    messages: list[str] = []
    result = finetune(model, loader(), config=config, evaluate=evaluate,
                      checkpoint_dir=tmp_path, log=messages.append)  # fmt: skip
    assert result.stopped_by == "early_stopping"
    assert [h.epoch for h in result.history] == [1, 2, 3, 4] and result.best_epoch == 2
    assert same(weights(model), seen[1])
    assert any("stopped early" in m for m in messages)
    # a stopped run is finished: calling again trains nothing
    again = finetune(mlp(seed=3), loader(), config=config, evaluate=evaluate,
                     checkpoint_dir=tmp_path)  # fmt: skip
    assert again.stopped_by == "early_stopping" and again.steps == 0 and again.best_epoch == 2


def test_min_epochs_keeps_early_epochs_out_of_the_best_weights() -> None:
    scores = iter([0.9, 0.1, 0.3, 0.2])
    config = FinetuneConfig(epochs=6, lr=0.05, min_epochs=2, patience=1, max_steps_per_epoch=1)
    result = finetune(mlp(), loader(), config=config, evaluate=lambda m: next(scores))
    # epoch 1 (0.9) is no candidate; epoch 2 is the first, 3 beats it, 4 does not: stop
    assert result.best_epoch == 3 and result.stopped_by == "early_stopping"
    assert len(result.history) == 4


# --- steps --------------------------------------------------------------------------------


def test_gradient_clipping_bounds_the_global_norm_of_a_step() -> None:
    model = mlp(dropout=0.0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    config = FinetuneConfig(epochs=1, lr=1.0, momentum=0.0, weight_decay=0.0,
                            schedule="constant", grad_clip=1e-3, max_steps_per_epoch=1)  # fmt: skip
    finetune(model, loader(), config=config)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # plain SGD at lr 1 moves the weights by exactly the clipped gradient
    assert float((after - before).norm()) == pytest.approx(1e-3, rel=1e-3)


def test_bf16_autocast_runs_the_student_in_bfloat16_and_the_teacher_in_float32() -> None:
    model, teacher = mlp(dropout=0.0), mlp(seed=4, dropout=0.0)
    got: list[torch.dtype] = []
    wanted: list[torch.dtype] = []
    model[3].register_forward_hook(lambda _m, _i, out: got.append(out.dtype))
    teacher[3].register_forward_hook(lambda _m, _i, out: wanted.append(out.dtype))
    config = FinetuneConfig(epochs=1, lr=0.05, amp="bf16", max_steps_per_epoch=2)
    result = finetune(model, loader(), config=config, teacher=teacher)
    assert got == [torch.bfloat16] * 2 and wanted == [torch.float32] * 2
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert math.isfinite(result.history[0].train_loss)
    off = FinetuneConfig(epochs=1, amp="auto", max_steps_per_epoch=1)  # auto: off on the CPU
    got.clear()
    finetune(model, loader(), config=off)
    assert got == [torch.float32]


def test_fp16_with_a_gradient_scaler_trains_and_checkpoints_the_scaler(tmp_path: Path) -> None:
    config = FinetuneConfig(epochs=2, lr=0.05, amp="fp16", max_steps_per_epoch=2)
    result = finetune(mlp(), loader(), config=config, checkpoint_dir=tmp_path)
    assert all(math.isfinite(h.train_loss) for h in result.history)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["scaler"] is not None and saved["scaler"]["scale"] > 0


def test_parameters_swapped_in_on_step_are_trained_from_then_on() -> None:
    model = mlp(dropout=0.0)
    replaced: list[torch.Tensor] = []

    def prune_half(epoch: int, step: int, loss: float) -> None:
        if (epoch, step) != (1, 1):
            return
        with torch.no_grad():  # keep 8 of 16 hidden units: new, smaller tensors
            first, last = model[0], model[3]
            first.weight = nn.Parameter(first.weight[:8].clone())
            first.bias = nn.Parameter(first.bias[:8].clone())
            last.weight = nn.Parameter(last.weight[:, :8].clone())
            first.out_features = last.in_features = 8
        replaced.append(first.weight.detach().clone())

    config = FinetuneConfig(epochs=2, lr=0.05, momentum=0.9)
    result = finetune(model, loader(), config=config, on_step=prune_half)
    assert model[0].weight.shape == (8, 8) and result.steps == 8
    assert not torch.equal(model[0].weight, replaced[0])  # the new tensors trained
    assert result.history[-1].lr == pytest.approx(0.0, abs=1e-12)  # the schedule went on


# --- pluggable losses ---------------------------------------------------------------------


def test_a_custom_loss_and_forward_see_the_batch_and_the_teacher_output() -> None:
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    data = TensorDataset(x, x @ torch.randn(8, 4, generator=torch.Generator().manual_seed(1)))
    batches = DataLoader(data, batch_size=8)

    def forward(model: nn.Module, batch: object) -> torch.Tensor:
        return model(batch[0])  # type: ignore[index]

    seen: list[bool] = []

    def regression(output: torch.Tensor, batch: object, teacher_output: object) -> torch.Tensor:
        seen.append(teacher_output is not None)
        return F.mse_loss(output, batch[1])  # type: ignore[index]

    model = nn.Linear(8, 4)
    config = FinetuneConfig(epochs=20, lr=0.1, distill_alpha=0.0)
    result = finetune(model, batches, config=config, loss=regression, forward=forward,
                      teacher=nn.Linear(8, 4))  # fmt: skip
    assert all(seen) and len(seen) == 80  # a custom loss always gets the teacher's output
    assert result.history[-1].train_loss < 0.5 * result.history[0].train_loss


def test_classification_loss_is_the_distillation_loss_on_labels() -> None:
    s, t = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.5, 0.2, -0.4]])
    y = torch.tensor([0])
    loss = ClassificationLoss(temperature=3.0, alpha=0.6)
    assert float(loss(s, (None, y), t)) == pytest.approx(float(DistillationLoss(3.0, 0.6)(s, t, y)))
    assert float(loss(s, (None, y), None)) == pytest.approx(float(F.cross_entropy(s, y)))


def test_dice_loss_golden_values() -> None:
    # two pixels, two classes; logits 0 give probabilities 0.5 everywhere
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    # per class: intersection 0.5, sizes 1 + 1 = 2 -> dice = (1 + s) / (2 + s)
    assert float(dice_loss(logits, target, smooth=0.0)) == pytest.approx(0.5)
    assert float(dice_loss(logits, target, smooth=1.0)) == pytest.approx(1 - 2 / 3)
    # a confident, right prediction scores ~0; class 1 absent from the labels is left out
    sure = torch.tensor([[[[20.0, 20.0]], [[-20.0, -20.0]]]])
    assert float(dice_loss(sure, torch.tensor([[[0, 0]]]), smooth=0.0)) == pytest.approx(
        0, abs=1e-6
    )
    # ignored pixels count nowhere; all ignored: zero
    ignored = torch.tensor([[[0, 255]]])
    # class 0 only: p = 0.5 on the counted pixel -> dice = 2 * 0.5 / (0.5 + 1)
    assert float(dice_loss(logits, ignored, smooth=0.0)) == pytest.approx(1 - 1 / 1.5)
    assert float(dice_loss(logits, torch.full((1, 1, 2), 255), smooth=0.0)) == 0.0


def test_segmentation_loss_adds_dice_to_pixel_cross_entropy_and_distils() -> None:
    logits = torch.tensor([[[[1.0, -1.0]], [[0.0, 2.0]]]])  # [1, 2, 1, 2]
    masks = torch.tensor([[[0, 1]]])
    ce = F.cross_entropy(logits, masks)
    task = SegmentationLoss(dice_weight=0.5)(logits, (None, masks))
    assert float(task) == pytest.approx(float(ce + 0.5 * dice_loss(logits, masks)))
    assert float(SegmentationLoss(dice_weight=0.0)(logits, (None, masks))) == pytest.approx(
        float(ce)
    )
    # distillation from an identical teacher adds nothing but the (1 - alpha) weighting
    kd = SegmentationLoss(dice_weight=0.0, alpha=0.25)(logits, (None, masks), {"out": logits})
    assert float(kd) == pytest.approx(0.75 * float(ce), rel=1e-6)
    # a smaller output is resized to the masks
    small = SegmentationLoss()(
        torch.zeros(1, 2, 1, 1), (None, torch.zeros(1, 2, 2, dtype=torch.long))
    )
    assert math.isfinite(float(small))


def test_embedding_distillation_loss_matches_its_terms() -> None:
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    assert float(EmbeddingDistillationLoss(relational_weight=2.0)(a, {}, b)) == pytest.approx(
        float(relational_loss(a, b, 2.0))
    )
    hidden = (torch.ones(1, 2, 3), torch.ones(1, 2, 3))
    zero = EmbeddingDistillationLoss(hidden_weight=1.0)(hidden, {"attention_mask": torch.ones(1, 2)},
                                                        hidden)  # fmt: skip
    assert float(zero) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(RecoveryError, match="hidden_weight must be >= 0"):
        EmbeddingDistillationLoss(hidden_weight=-1)
