"""prunekit.recovery.embedding_distill: the loss terms and the recovery of a damaged encoder."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.recovery.embedding_distill import (
    distill_embeddings,
    hidden_state_loss,
    relational_loss,
)
from prunekit.recovery.finetuning import RecoveryError

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN = 40, 16


def _bert(layers: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=24, max_position_embeddings=16, attn_implementation="eager",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertModel(config).eval()


def _batches(count: int = 4) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        ids = torch.randint(1, VOCAB, (6, 9), generator=gen)
        mask = torch.ones(6, 9, dtype=torch.long)
        mask[::2, 6:] = 0  # padded sentences
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_relational_loss_golden_values() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(relational_loss(a, 3 * a)) == pytest.approx(0.0)  # scale-free
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # pointwise: (1 - 1 + 1 - 0) / 2 = 0.5; similarity matrices differ by 1 off the diagonal
    assert float(relational_loss(a, b, weight=0.0)) == pytest.approx(0.5)
    assert float(relational_loss(a, b, weight=2.0)) == pytest.approx(0.5 + 2 * 2 / 4)


def test_hidden_state_loss_ignores_padding_and_normalises_per_layer() -> None:
    mask = torch.tensor([[1, 1, 0]])
    teacher = (torch.ones(1, 3, 2), 10 * torch.ones(1, 3, 2))
    student = (torch.zeros(1, 3, 2), 10 * torch.ones(1, 3, 2))
    assert float(hidden_state_loss(student, teacher, mask)) == pytest.approx(0.5)  # (1 + 0) / 2
    padded_only = (teacher[0].clone(), teacher[1].clone())
    padded_only[0][0, 2] = 99.0  # a padded token: not counted
    assert float(hidden_state_loss(padded_only, teacher, mask)) == pytest.approx(0.0)
    with pytest.raises(RecoveryError, match="as many layers"):
        hidden_state_loss(student[:1], teacher, mask)


def _damaged_pair() -> tuple[nn.Module, nn.Module]:
    teacher = _bert()
    student = copy.deepcopy(teacher)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in student.encoder.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return teacher, student


def _token_gap(student: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        got = student(**batch, output_hidden_states=True).hidden_states
        want = teacher(**batch, output_hidden_states=True).hidden_states
    return float(hidden_state_loss(got, want, batch["attention_mask"]))


def test_distillation_brings_a_damaged_student_back() -> None:
    batches = _batches()
    gaps = {}
    for hidden_weight in (0.0, 1.0):
        teacher, student = _damaged_pair()
        frozen = copy.deepcopy(teacher.state_dict())
        before = _token_gap(student, teacher, batches[0])
        result = distill_embeddings(student, teacher, batches, epochs=15, lr=1e-3,
                                    hidden_weight=hidden_weight)  # fmt: skip
        assert result.steps == 60 and result.epochs == pytest.approx(15.0)
        assert result.stopped_by == "epochs"
        assert result.last_loss < 0.25 * result.first_loss
        gaps[hidden_weight] = _token_gap(student, teacher, batches[0]) / before
        for name, value in teacher.state_dict().items():  # the teacher is never trained
            torch.testing.assert_close(value, frozen[name])
    # matching only the pooled embedding leaves the tokens' hidden states where they were;
    # the hidden-state term brings them back (measured: 1.01 and 0.32 of the damage)
    assert gaps[1.0] < 0.5
    assert gaps[1.0] < 0.6 * gaps[0.0]


def test_hidden_state_distillation_refuses_a_student_with_fewer_layers() -> None:
    teacher, student = _bert(layers=2), _bert(layers=1)
    with pytest.raises(RecoveryError, match="as many layers"):
        distill_embeddings(student, teacher, _batches(1), epochs=1, hidden_weight=1.0)
    with pytest.raises(RecoveryError, match="hidden_weight"):
        distill_embeddings(student, teacher, _batches(1), epochs=1, hidden_weight=-1.0)


def test_time_budget_stops_early_and_decays_the_learning_rate() -> None:
    teacher = _bert()
    student = copy.deepcopy(teacher)
    seen: list[float] = []
    original = torch.optim.AdamW.step

    def spy(self: torch.optim.AdamW, *args: object, **kwargs: object) -> object:
        seen.append(float(self.param_groups[0]["lr"]))
        return original(self, *args, **kwargs)

    threads = torch.get_num_threads()
    # one thread: on a busy machine, threads that wait for each other make a step of this tiny
    # model take most of the budget, and the test would see one or two steps
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.optim.AdamW, "step", spy)
            result = distill_embeddings(student, teacher, _batches(2), epochs=10_000,
                                        time_budget_s=1.0, lr=1e-3)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert result.epochs < 10_000 and 0.9 < result.seconds < 5.0
    assert result.stopped_by == "time"
    # the cosine decay follows the clock when the clock ends first: the last steps run at a
    # small fraction of the initial learning rate, not at nearly all of it
    assert seen[0] == pytest.approx(1e-3, rel=0.05)
    assert seen[-1] < 0.1 * seen[0]


def test_student_trains_without_dropout_unless_asked() -> None:
    # A student identical to its teacher but with heavy dropout: without dropout there is
    # nothing to learn (zero loss); with dropout the noise is the loss.
    teacher = _bert()
    config = copy.deepcopy(teacher.config)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.5
    student = transformers.BertModel(config)
    student.load_state_dict(teacher.state_dict())
    student.eval()
    quiet = distill_embeddings(student, teacher, _batches(), epochs=1, lr=1e-3, hidden_weight=1.0)
    assert quiet.first_loss == pytest.approx(0.0, abs=1e-6)
    assert not student.training  # the caller's mode comes back
    student.load_state_dict(teacher.state_dict())
    noisy = distill_embeddings(student, teacher, _batches(), epochs=1, lr=1e-3, hidden_weight=1.0,
                               dropout=True)  # fmt: skip
    assert noisy.first_loss > 0.01


def test_word_embeddings_stay_frozen_unless_asked() -> None:
    teacher, student = _damaged_pair()
    words = student.get_input_embeddings().weight
    before, others = (
        words.detach().clone(),
        student.encoder.layer[0].output.dense.weight.detach().clone(),
    )
    distill_embeddings(student, teacher, _batches(2), epochs=2, lr=1e-2)
    assert torch.equal(words, before)  # not trained...
    assert words.requires_grad  # ...and handed back trainable
    assert not torch.equal(student.encoder.layer[0].output.dense.weight, others)
    distill_embeddings(student, teacher, _batches(2), epochs=2, lr=1e-2, train_embeddings=True)
    assert not torch.equal(words, before)


def test_a_cached_teacher_trains_the_student_like_a_running_one() -> None:
    results = {}
    for cache in (False, True):
        teacher, student = _damaged_pair()
        result = distill_embeddings(student, teacher, _batches(), epochs=3, lr=1e-3,
                                    hidden_weight=1.0, cache_teacher=cache)  # fmt: skip
        results[cache] = (result, student.encoder.layer[0].output.dense.weight.detach().clone())
    (plain, w_plain), (cached, w_cached) = results[False], results[True]
    # the cached hidden states are float16: the same training within that precision
    assert cached.first_loss == pytest.approx(plain.first_loss, rel=1e-3)
    assert cached.last_loss == pytest.approx(plain.last_loss, rel=2e-2)
    torch.testing.assert_close(w_cached, w_plain, rtol=0, atol=2e-3)


def test_bfloat16_autocast_runs_the_matmuls_in_bfloat16_and_still_recovers() -> None:
    teacher, student = _damaged_pair()
    seen: list[torch.dtype] = []
    linear = student.encoder.layer[0].output.dense
    handle = linear.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    targets: list[torch.dtype] = []  # the teacher runs at every step (not cached)
    teacher.encoder.layer[0].output.dense.register_forward_hook(
        lambda _m, _i, out: targets.append(out.dtype)
    )
    plain_teacher, plain_student = _damaged_pair()
    plain = distill_embeddings(plain_student, plain_teacher, _batches(), epochs=15, lr=1e-3,
                               hidden_weight=1.0)  # fmt: skip
    fast = distill_embeddings(student, teacher, _batches(), epochs=15, lr=1e-3, hidden_weight=1.0,
                              autocast=torch.bfloat16)  # fmt: skip
    handle.remove()
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert targets and all(d == torch.float32 for d in targets)  # the targets stay float32
    assert all(p.dtype == torch.float32 for p in student.parameters())  # weights stay float32
    # the same loss at the start within bfloat16's precision (8 bits of mantissa), and the
    # same recovery at the end
    assert fast.first_loss == pytest.approx(plain.first_loss, rel=5e-2)
    assert fast.last_loss < 0.25 * fast.first_loss
    assert fast.last_loss == pytest.approx(plain.last_loss, rel=0.3)
    batch = _batches(1)[0]
    with torch.no_grad():  # and the model runs in float32 again afterwards
        assert student(**batch).last_hidden_state.dtype == torch.float32
