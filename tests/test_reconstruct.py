"""Least-squares refitting of Linears whose inputs were pruned (recovery.reconstruct)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.recovery.finetuning import RecoveryError
from prunekit.recovery.reconstruct import pruned_input_linears, reconstruct_linears


def _mlp(seed: int = 0, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3, bias=bias))


def _drop_hidden(model: nn.Sequential, keep: list[int]) -> nn.Sequential:
    """Physically remove hidden neurons: rows of the first Linear, columns of the second."""
    pruned = copy.deepcopy(model)
    first, second = pruned[0], pruned[2]
    index = torch.tensor(keep)
    new_first = nn.Linear(6, len(keep))
    new_first.weight.data = first.weight.data[index].clone()
    new_first.bias.data = first.bias.data[index].clone()
    new_second = nn.Linear(len(keep), 3, bias=second.bias is not None)
    new_second.weight.data = second.weight.data[:, index].clone()
    if second.bias is not None:
        new_second.bias.data = second.bias.data.clone()
    pruned[0], pruned[2] = new_first, new_second
    return pruned


def _batches(seed: int = 1, n: int = 4) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 6, generator=generator) for _ in range(n)]


def test_duplicate_neurons_are_recovered_exactly() -> None:
    # Hidden neuron 7 duplicates neuron 2 and neuron 6 is always off (ReLU of a large negative
    # bias). Removing both loses nothing a refit cannot restore: the removed duplicate's outgoing
    # column moves onto its twin. Ridge 0 must find that exact solution.
    teacher = _mlp()
    with torch.no_grad():
        teacher[0].weight[7] = teacher[0].weight[2]
        teacher[0].bias[7] = teacher[0].bias[2]
        teacher[0].weight[6] = 0.0
        teacher[0].bias[6] = -100.0
    student = _drop_hidden(teacher, [0, 1, 2, 3, 4, 5])
    batches = _batches()
    x = torch.cat(batches)
    assert not torch.allclose(student(x), teacher(x), atol=1e-3)  # pruning did change it

    (refit,) = reconstruct_linears(student, teacher, batches, ridge=0.0)

    assert refit.name == "2"
    assert refit.error_before > 0.01
    assert refit.error_after < 1e-10
    assert refit.kept and refit.output_error_after < 1e-10 < refit.output_error_before
    torch.testing.assert_close(student(x), teacher(x), atol=1e-5, rtol=1e-5)
    expected = teacher[2].weight[:, :6].clone()
    expected[:, 2] += teacher[2].weight[:, 7]
    torch.testing.assert_close(student[2].weight, expected, atol=1e-5, rtol=1e-5)


def test_bias_compensates_a_constant_removed_neuron() -> None:
    # A removed neuron that is constant on the data (bias only, zero weights) is exactly the
    # FLAP bias compensation: its outgoing column times the constant moves into the bias.
    teacher = _mlp(seed=3)
    with torch.no_grad():
        teacher[0].weight[5] = 0.0
        teacher[0].bias[5] = 0.75
    keep = [0, 1, 2, 3, 4, 6, 7]
    student = _drop_hidden(teacher, keep)
    reconstruct_linears(student, teacher, _batches(), ridge=0.0)
    torch.testing.assert_close(
        student[2].bias, teacher[2].bias + 0.75 * teacher[2].weight[:, 5], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(student[2].weight, teacher[2].weight[:, keep], atol=1e-5, rtol=1e-5)


def test_refit_lowers_the_error_and_never_raises_it() -> None:
    teacher = _mlp(seed=5)
    student = _drop_hidden(teacher, [0, 3, 4, 7])
    for ridge in (0.0, 1e-2, 1e3):
        candidate = copy.deepcopy(student)
        (refit,) = reconstruct_linears(candidate, teacher, _batches(), ridge=ridge)
        assert refit.error_after <= refit.error_before
    (refit,) = reconstruct_linears(student, teacher, _batches(), ridge=0.0)
    assert refit.error_after < 0.9 * refit.error_before


class _Residual(nn.Module):
    """``down(relu(up(x))) + skip(x)``: a Linear whose output joins a residual path."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(4, hidden)
        self.down = nn.Linear(hidden, 4)
        self.skip = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x))) + self.skip(x)


def test_a_refit_that_moves_the_model_output_away_is_undone() -> None:
    # The removed neuron is always active (huge bias), so its contribution is linear in x, and
    # the student's skip path already carries it: the student's output equals the teacher's.
    # Refitting `down` alone to the teacher's `down` output would count that part twice.
    torch.manual_seed(0)
    teacher = _Residual(6)
    with torch.no_grad():
        teacher.up.bias[5] = 50.0
    student = _Residual(5)
    column = teacher.down.weight[:, 5].detach()
    with torch.no_grad():
        student.up.weight.copy_(teacher.up.weight[:5])
        student.up.bias.copy_(teacher.up.bias[:5])
        student.down.weight.copy_(teacher.down.weight[:, :5])
        student.down.bias.copy_(teacher.down.bias)
        student.skip.weight.copy_(teacher.skip.weight + torch.outer(column, teacher.up.weight[5]))
        student.skip.bias.copy_(teacher.skip.bias + column * teacher.up.bias[5])
    batches = _batches(n=2)
    batches = [b[:, :4] for b in batches]
    x = torch.cat(batches)
    torch.testing.assert_close(student(x), teacher(x), atol=1e-4, rtol=1e-4)
    before = copy.deepcopy(student.state_dict())

    (refit,) = reconstruct_linears(student, teacher, batches, ridge=0.0)

    assert refit.name == "down"
    assert refit.error_after < 0.5 * refit.error_before  # its own layer would match better
    assert not refit.kept
    assert refit.output_error_after > refit.output_error_before
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_linear_without_bias_stays_without_bias() -> None:
    teacher = _mlp(seed=2, bias=False)
    student = _drop_hidden(teacher, [0, 1, 2, 4, 5, 6])
    reconstruct_linears(student, teacher, _batches())
    assert student[2].bias is None
    assert set(dict(student.named_parameters())) == {"0.weight", "0.bias", "2.weight"}


class _Tokens(nn.Module):
    """A token model called with a dict batch; padded positions hold garbage inputs."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(4, hidden)
        self.down = nn.Linear(hidden, 4)

    def forward(self, values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(values)))


def test_padded_tokens_are_left_out() -> None:
    torch.manual_seed(0)
    teacher = _Tokens(6)
    student = _Tokens(4)
    with torch.no_grad():
        student.up.weight.copy_(teacher.up.weight[:4])
        student.up.bias.copy_(teacher.up.bias[:4])
        student.down.weight.copy_(teacher.down.weight[:, :4])
        student.down.bias.copy_(teacher.down.bias)
    generator = torch.Generator().manual_seed(4)
    values = torch.randn(3, 10, 4, generator=generator)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[:, 7:] = 0
    garbage = values.clone()
    garbage[:, 7:] = 1e3 * torch.randn(3, 3, 4, generator=generator)
    clean = copy.deepcopy(student)
    reconstruct_linears(clean, teacher, [{"values": values[:, :7], "attention_mask": mask[:, :7]}])
    reconstruct_linears(student, teacher, [{"values": garbage, "attention_mask": mask}])
    torch.testing.assert_close(student.down.weight, clean.down.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(student.down.bias, clean.down.bias, atol=1e-5, rtol=1e-5)


def test_finds_the_linears_that_read_pruned_channels() -> None:
    teacher = _mlp()
    student = _drop_hidden(teacher, [0, 1, 2])
    assert pruned_input_linears(student, teacher) == ["2"]
    assert pruned_input_linears(teacher, teacher) == []


def test_bad_input_is_refused() -> None:
    teacher = _mlp()
    student = _drop_hidden(teacher, [0, 1])
    with pytest.raises(RecoveryError, match="at least one calibration batch"):
        reconstruct_linears(student, teacher, [])
    with pytest.raises(RecoveryError, match="ridge must be >= 0"):
        reconstruct_linears(student, teacher, _batches(), ridge=-1.0)
    with pytest.raises(RecoveryError, match=r"not an nn\.Linear"):
        reconstruct_linears(student, teacher, _batches(), names=["1"])


class _Output(nn.Module):
    """A Hugging Face BERT-style output block: ``LayerNorm(dense(hidden_states) + input_tensor)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden_states) + input_tensor)


class _ResidualNet(nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.skip = nn.Linear(width, width)
        self.output = _Output(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(x, input_tensor=self.skip(x))


def test_residual_targets_correct_what_pruning_changed_upstream() -> None:
    # The student's residual branch differs from the teacher's by a linear map E of the
    # block's input: dense' = dense - E makes the LayerNorm see exactly the teacher's sum.
    # Matching the dense layer's own output cannot see that; matching what the teacher
    # feeds the LayerNorm, less the student's residual, recovers the teacher exactly.
    torch.manual_seed(0)
    teacher = _ResidualNet().eval()
    errors = {}
    for residual in (False, True):
        student = copy.deepcopy(teacher)
        with torch.no_grad():
            student.skip.weight.add_(0.3 * torch.randn(6, 6))
        refits = reconstruct_linears(student, teacher, _batches(), ["output.dense"], ridge=0.0,
                                     residual=residual)  # fmt: skip
        x = _batches(seed=7, n=1)[0]
        with torch.no_grad():
            errors[residual] = float((student(x) - teacher(x)).abs().max())
        assert refits[0].kept or not residual
    assert errors[True] < 1e-4 < 0.1 < errors[False]
