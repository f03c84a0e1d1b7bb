"""prunekit.recovery: distillation loss, resumable fine-tuning, iterative pruning rounds."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.evaluate import evaluate_classification
from prunekit.recovery import (
    CheckpointError,
    DistillationLoss,
    Distiller,
    FinetuneConfig,
    IterativePruning,
    RecoveryError,
    StructuredPruneSteps,
    count_parameters,
    finetune,
)

# --- data and models --------------------------------------------------------------------------


def blobs(n: int, seed: int, classes: int = 4, dim: int = 8) -> TensorDataset:
    """Gaussian blobs around fixed, well separated centres: linearly separable."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, dim, generator=g)
    return TensorDataset(x, y)


def mlp(hidden: int = 16, seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 4))


def nearest_centre(classes: int = 4, dim: int = 8) -> nn.Module:
    """A near-perfect teacher for ``blobs``: logits = -squared distance to each centre."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    teacher = nn.Linear(dim, classes)
    with torch.no_grad():
        teacher.weight.copy_(2 * centres)
        teacher.bias.copy_(-(centres**2).sum(1))
    return teacher


def loaders(batch: int = 32) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(blobs(256, seed=1), batch_size=batch, shuffle=True)
    val = DataLoader(blobs(256, seed=2), batch_size=128)
    return train, val


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- distillation loss ------------------------------------------------------------------------

STUDENT = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.3, -0.7]])
TEACHER = torch.tensor([[1.5, 0.2, -0.4], [-0.3, 1.1, 0.6]])
LABELS = torch.tensor([0, 2])


def hand_ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist(), strict=True):
        total += math.log(sum(math.exp(v) for v in row)) - row[y]
    return total / len(logits)


def hand_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    def softmax(row: list[float]) -> list[float]:
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p, q = softmax(t_row), softmax(s_row)
        total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    return total / len(student)


def test_distillation_loss_matches_hand_computed_formula() -> None:
    t, alpha = 3.0, 0.6
    expected = (1 - alpha) * hand_ce(STUDENT, LABELS) + alpha * t * t * hand_kl(STUDENT, TEACHER, t)
    got = DistillationLoss(temperature=t, alpha=alpha)(STUDENT, TEACHER, LABELS)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the pieces, separately: no hidden extra scaling
    assert hand_ce(STUDENT, LABELS) == pytest.approx(F.cross_entropy(STUDENT, LABELS).item())
    assert hand_kl(STUDENT, TEACHER, t) > 0


def test_distillation_loss_alpha_extremes_and_logits_attribute() -> None:
    ce = DistillationLoss(alpha=0.0)(STUDENT, None, LABELS)  # no teacher needed
    assert ce.item() == pytest.approx(hand_ce(STUDENT, LABELS), rel=1e-6)
    only_teacher = DistillationLoss(temperature=2.0, alpha=1.0)
    a = only_teacher(STUDENT, TEACHER, LABELS)
    b = only_teacher(STUDENT, TEACHER, torch.tensor([1, 1]))
    c = only_teacher(STUDENT, TEACHER, None)
    assert a.item() == b.item() == c.item() == pytest.approx(4 * hand_kl(STUDENT, TEACHER, 2.0))
    # outputs with .logits (Hugging Face style) are accepted on both sides
    wrapped = DistillationLoss(alpha=0.5)(
        SimpleNamespace(logits=STUDENT), SimpleNamespace(logits=TEACHER), LABELS
    )
    assert wrapped.item() == DistillationLoss(alpha=0.5)(STUDENT, TEACHER, LABELS).item()
    # no gradient reaches the teacher's logits
    s, te = STUDENT.clone().requires_grad_(), TEACHER.clone().requires_grad_()
    DistillationLoss(alpha=0.5)(s, te, LABELS).backward()
    assert s.grad is not None and te.grad is None
    with pytest.raises(ValueError, match="teacher logits are needed"):
        DistillationLoss(alpha=0.5)(STUDENT, None, LABELS)
    with pytest.raises(ValueError, match="labels are needed"):
        DistillationLoss(alpha=0.5)(STUDENT, TEACHER, None)
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss(alpha=1.5)


def test_distiller_runs_teacher_without_grad() -> None:
    teacher = nearest_centre()
    teacher.train()
    distiller = Distiller(teacher, temperature=2.0, alpha=0.5)
    assert not teacher.training
    x, y = blobs(16, seed=3).tensors
    student = mlp()
    loss = distiller.loss(student(x), x, y)
    expected = DistillationLoss(2.0, 0.5)(student(x), teacher(x), y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    by_logits = distiller.loss(student(x), labels=y, teacher_logits=teacher(x).detach())
    assert by_logits.item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(ValueError, match="either"):
        distiller.loss(student(x), x, y, teacher_logits=teacher(x))


# --- fine-tuning ------------------------------------------------------------------------------


def test_finetune_recovers_a_damaged_classifier_with_distillation() -> None:
    train, val = loaders()
    model = mlp(seed=0)
    with torch.no_grad():  # damage: scramble the first layer
        model[0].weight.copy_(
            torch.randn(model[0].weight.shape, generator=torch.Generator().manual_seed(9)) * 5
        )
        model[3].weight.mul_(-1)
    before = evaluate_classification(model, val).top1
    assert before < 0.5  # 4 classes: near chance
    teacher = nearest_centre()
    assert evaluate_classification(teacher, val).top1 > 0.95
    teacher_before = state(teacher)
    teacher_modes: list[bool] = []
    teacher.register_forward_pre_hook(lambda m, args: teacher_modes.append(m.training))
    teacher.train()  # modes are restored on return; the teacher runs in eval mode meanwhile
    model.eval()
    config = FinetuneConfig(epochs=4, lr=0.05, optimizer="adamw", warmup_epochs=0.5, seed=0)
    messages: list[str] = []
    result = finetune(
        model, train, config=config, teacher=teacher, val_loader=val, log=messages.append
    )
    assert [h.epoch for h in result.history] == [1, 2, 3, 4]
    assert all(h.steps == 8 for h in result.history)
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.history[-1].lr == pytest.approx(0.0, abs=1e-12)  # cosine ends at zero
    after = evaluate_classification(model, val).top1
    assert after > 0.9
    assert result.best is not None and after == result.best.val_top1
    assert not result.resumed and result.epochs_run == 4
    assert not model.training and teacher.training
    assert len(teacher_modes) == 4 * 8 and not any(teacher_modes)
    assert same_weights(teacher_before, state(teacher))
    assert all(p.grad is None for p in teacher.parameters())
    assert len(messages) == 4 and "val top-1" in messages[-1]


def test_finetune_restores_best_validation_weights(tmp_path: Path) -> None:
    train, _ = loaders()
    scores = iter([0.5, 0.9, 0.7])
    seen: list[dict[str, torch.Tensor]] = []

    def evaluate(model: nn.Module) -> float:
        assert not model.training and not torch.is_grad_enabled()
        seen.append(state(model))
        return next(scores)

    model = mlp()
    model.train()
    config = FinetuneConfig(epochs=3, lr=0.05, max_steps_per_epoch=3)
    result = finetune(model, train, config=config, evaluate=evaluate, checkpoint_dir=tmp_path)
    assert result.best_epoch == 2
    assert same_weights(state(model), seen[1]) and not same_weights(seen[1], seen[2])
    assert model.training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-epoch0002.pt", "last.pt"]
    # done already: returns at once, with the best weights put into a fresh model
    fresh = mlp(seed=5)
    again = finetune(fresh, train, config=config, evaluate=evaluate, checkpoint_dir=tmp_path)
    assert again.resumed and again.epochs_run == 0 and again.best_epoch == 2
    assert again.history == result.history
    assert same_weights(state(fresh), seen[1])


def _interrupt_at(epoch: int, step: int, calls: list[tuple[int, int]]):  # type: ignore[no-untyped-def]
    def on_step(e: int, s: int, loss: float) -> None:
        calls.append((e, s))
        if (e, s) == (epoch, step):
            raise KeyboardInterrupt

    return on_step


@pytest.mark.parametrize("own_generator", [False, True])
def test_interrupted_finetune_resumes_bit_exact(tmp_path: Path, own_generator: bool) -> None:
    # dropout and a shuffling loader consume random numbers: the global RNG, or the loader's
    # own generator; both must be restored for the resumed run to see the same data order
    config = FinetuneConfig(epochs=3, lr=0.05, momentum=0.9, seed=7)

    def make_train() -> DataLoader:  # 4 steps per epoch; a fresh generator for every run
        g = torch.Generator().manual_seed(5) if own_generator else None
        return DataLoader(blobs(256, seed=1), batch_size=64, shuffle=True, generator=g)

    train = make_train()
    reference = mlp(seed=1, dropout=0.2)
    full = finetune(reference, train, config=config, checkpoint_dir=tmp_path / "full")

    calls: list[tuple[int, int]] = []
    model = mlp(seed=1, dropout=0.2)
    train = make_train()
    with pytest.raises(KeyboardInterrupt):
        finetune(
            model,
            train,
            config=config,
            checkpoint_dir=tmp_path / "cut",
            on_step=_interrupt_at(2, 1, calls),
        )
    assert calls == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1)]
    torch.rand(100)  # disturb the global RNG between the runs

    calls.clear()
    resumed_model = mlp(seed=3, dropout=0.2)  # a fresh object, other initial weights
    resumed = finetune(
        resumed_model,
        train,
        config=config,
        checkpoint_dir=tmp_path / "cut",
        on_step=lambda e, s, loss: calls.append((e, s)),
    )
    assert resumed.resumed and resumed.start_epoch == 1 and resumed.epochs_run == 2
    assert [e for e, _ in calls] == [2] * 4 + [3] * 4  # epoch 1 not redone
    assert resumed.history == full.history
    assert same_weights(state(resumed_model), state(reference))

    # everything done: returns at once with the stored history
    calls.clear()
    again = finetune(
        mlp(seed=4, dropout=0.2),
        train,
        config=config,
        checkpoint_dir=tmp_path / "cut",
        on_step=lambda e, s, loss: calls.append((e, s)),
    )
    assert calls == [] and again.history == full.history and again.epochs_run == 0


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, _ = loaders()
    config = FinetuneConfig(epochs=2, max_steps_per_epoch=2)
    real_save = torch.save
    saves = []

    def flaky_save(obj, f):  # type: ignore[no-untyped-def]
        saves.append(obj)
        if len(saves) == 2:  # epoch 2's checkpoint: write half a file, then fail
            f.write(b"partial")
            raise OSError("disk full")
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        finetune(mlp(), train, config=config, checkpoint_dir=tmp_path)
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1
    result = finetune(mlp(), train, config=config, checkpoint_dir=tmp_path)
    assert result.resumed and result.start_epoch == 1 and result.epochs_run == 1


def test_checkpoint_of_another_model_or_config_is_refused(tmp_path: Path) -> None:
    train, _ = loaders()
    config = FinetuneConfig(epochs=1, max_steps_per_epoch=2)
    finetune(mlp(hidden=16), train, config=config, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"different model .*0\.weight: \[12, 8\] here"):
        finetune(mlp(hidden=12), train, config=config, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"different settings \(lr=0\.01 there, 0\.02 here"):
        finetune(
            mlp(hidden=16),
            train,
            config=FinetuneConfig(epochs=1, max_steps_per_epoch=2, lr=0.02),
            checkpoint_dir=tmp_path,
        )
    # resume=False discards the old checkpoint and starts over
    result = finetune(mlp(hidden=12), train, config=config, checkpoint_dir=tmp_path, resume=False)
    assert not result.resumed and result.epochs_run == 1


def test_unusable_checkpoint_dir_gives_clear_errors(tmp_path: Path) -> None:
    train, _ = loaders()
    config = FinetuneConfig(epochs=1, max_steps_per_epoch=1)
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    with pytest.raises(CheckpointError, match="exists and is not a directory"):
        finetune(mlp(), train, config=config, checkpoint_dir=a_file)
    with pytest.raises(CheckpointError, match="cannot create checkpoint_dir"):
        finetune(mlp(), train, config=config, checkpoint_dir=a_file / "sub")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(CheckpointError, match="is not writable"):
                finetune(mlp(), train, config=config, checkpoint_dir=locked)
        finally:
            locked.chmod(0o700)


def test_finetune_config_is_validated() -> None:
    with pytest.raises(RecoveryError, match="unknown optimizer"):
        FinetuneConfig(optimizer="rmsprop")
    with pytest.raises(RecoveryError, match="epochs"):
        FinetuneConfig(epochs=0)
    with pytest.raises(RecoveryError, match="teacher is the model"):
        model = mlp()
        finetune(model, loaders()[0], teacher=model)


# --- iterative pruning ------------------------------------------------------------------------


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


def images() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (32,), generator=g)
    x = torch.randn(32, 3, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float()
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)


def param_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters()}


def optimizer_ids(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for g in optimizer.param_groups for p in g["params"]}


def test_iterative_pruning_in_a_user_loop_rebuilds_the_optimizer() -> None:
    model = small_cnn()
    loader = images()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = IterativePruning(
        model, StructuredPruneSteps(torch.randn(2, 3, 8, 8), [0.25, 0.5]), optimizer=optimizer
    )
    assert pruner.steps == 2
    counts = [count_parameters(model)]
    widths = []
    for _ in range(2):
        for x, y in loader:  # a few steps of the user's own loop
            pruner.optimizer.zero_grad()  # type: ignore[union-attr]
            F.cross_entropy(model(x), y).backward()
            pruner.optimizer.step()  # type: ignore[union-attr]
        old_tensors = [p for p in model.parameters()]
        old_optimizer = pruner.optimizer
        record = pruner.step()
        counts.append(count_parameters(model))
        widths.append((model[0].out_channels, model[3].out_channels))
        assert record.params_before == counts[-2] and record.params_after == counts[-1]
        assert pruner.optimizer is not old_optimizer
        assert optimizer_ids(pruner.optimizer) == param_ids(model)  # type: ignore[arg-type]
        assert pruner.optimizer.param_groups[0]["momentum"] == 0.9  # type: ignore[union-attr]
        # the head's bias was not pruned: same tensor, momentum state carried over
        assert pruner.optimizer.state[model[8].bias]  # type: ignore[union-attr]
        assert not pruner.optimizer.state[model[0].weight]  # type: ignore[union-attr]
        # training now moves the new tensors and leaves the replaced ones alone
        snapshot = {id(p): p.detach().clone() for p in old_tensors}
        new_before = state(model)
        x, y = next(iter(loader))
        pruner.optimizer.zero_grad()  # type: ignore[union-attr]
        F.cross_entropy(model(x), y).backward()
        pruner.optimizer.step()  # type: ignore[union-attr]
        assert not torch.equal(new_before["0.weight"], model[0].weight)
        stale = [p for p in old_tensors if id(p) not in param_ids(model)]
        assert stale and all(torch.equal(snapshot[id(p)], p) for p in stale)
    assert widths == [(6, 12), (4, 8)]
    assert counts[0] > counts[1] > counts[2]
    assert pruner.done
    with pytest.raises(RecoveryError, match="all 2 pruning steps are done"):
        pruner.step()


def test_iterative_pruning_run_finetunes_the_new_tensors(tmp_path: Path) -> None:
    model = small_cnn()
    teacher = copy.deepcopy(model)
    pruner = IterativePruning(model, StructuredPruneSteps(torch.randn(2, 3, 8, 8), [0.25, 0.5]))
    seen: list[tuple[int, tuple[int, ...], bool]] = []

    def on_step(epoch: int, step: int, loss: float) -> None:
        # runs inside finetune: the model holds the tensors of the latest pruning step
        seen.append(
            (pruner.step_index, tuple(model[0].weight.shape), model[0].weight.requires_grad)
        )

    after_prune: list[dict[str, torch.Tensor]] = []
    original_step = pruner.step

    def step():  # type: ignore[no-untyped-def]
        record = original_step()
        after_prune.append(state(model))
        return record

    pruner.step = step  # type: ignore[method-assign]
    config = FinetuneConfig(epochs=1, lr=0.05, max_steps_per_epoch=2, distill_alpha=0.5)
    rounds = pruner.run(
        images(), config=config, teacher=teacher, checkpoint_dir=tmp_path, on_step=on_step
    )
    assert [r.index for r in rounds] == [0, 1]
    assert rounds[0].params_before > rounds[0].params_after == rounds[1].params_before
    assert rounds[1].params_before > rounds[1].params_after == count_parameters(model)
    assert seen == [(1, (6, 3, 3, 3), True)] * 2 + [(2, (4, 3, 3, 3), True)] * 2
    for r in rounds:
        assert r.finetune is not None and r.finetune.history[0].steps == 2
    # fine-tuning changed the pruned weights of round 2
    assert not torch.equal(after_prune[1]["0.weight"], model[0].weight)
    assert teacher[0].out_channels == 8  # the teacher is never pruned or trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-1", "round-2"]


def test_interrupted_iterative_run_resumes_from_the_dense_model(tmp_path: Path) -> None:
    config = FinetuneConfig(epochs=2, lr=0.05, max_steps_per_epoch=2)
    example = torch.randn(2, 3, 8, 8)

    def pruner(model: nn.Module) -> IterativePruning:
        return IterativePruning(model, StructuredPruneSteps(example, [0.25, 0.5]))

    reference = small_cnn()
    pruner(reference).run(images(), config=config, checkpoint_dir=tmp_path / "full")

    calls: list[tuple[int, int, int]] = []
    model = small_cnn()
    cut = pruner(model)

    def on_step(epoch: int, step: int, loss: float) -> None:
        calls.append((cut.step_index, epoch, step))
        if (cut.step_index, epoch, step) == (2, 2, 0):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cut.run(images(), config=config, checkpoint_dir=tmp_path / "cut", on_step=on_step)
    calls.clear()
    dense = small_cnn()
    again = pruner(dense)
    rounds = again.run(
        images(),
        config=config,
        checkpoint_dir=tmp_path / "cut",
        on_step=lambda e, s, loss: calls.append((again.step_index, e, s)),
    )
    assert calls == [(2, 2, 0), (2, 2, 1)]  # round 1 and round 2's first epoch not redone
    assert rounds[0].finetune is not None and rounds[0].finetune.epochs_run == 0
    assert rounds[1].finetune is not None and rounds[1].finetune.start_epoch == 1
    assert same_weights(state(dense), state(reference))
