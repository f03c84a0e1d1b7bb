"""``finetune`` under ``torchrun`` (2 CPU processes, gloo): the same weights as one process on
the same global batch, ranks kept in step after pruning swaps tensors, and a killed run that
resumes to the weights of an uninterrupted one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from prunekit.recovery import FinetuneConfig, finetune
from prunekit.recovery import distributed as dist_helpers

pytestmark = pytest.mark.slow

COMMON = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

CONFIG = dict(epochs=3, lr=0.1, momentum=0.0, weight_decay=0.0, seed=3)


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (64,), generator=g)
    return TensorDataset(torch.randn(64, 8, generator=g) + y[:, None].float(), y)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def swap(net: nn.Module, noise: float) -> None:
    # prune to 8 hidden units: new, smaller tensors (as structured pruning makes them)
    with torch.no_grad():
        first, last = net[0], net[2]
        first.weight = nn.Parameter(first.weight[:8].clone() + noise)
        first.bias = nn.Parameter(first.bias[:8].clone())
        last.weight = nn.Parameter(last.weight[:, :8].clone())
        first.out_features = last.in_features = 8
"""

WORKER = """
import os
import sys

import torch
from torch.utils.data import DataLoader

from common import CONFIG, dataset, model, swap
from prunekit.recovery import FinetuneConfig, finetune
from prunekit.recovery.distributed import is_primary, rank, world_size

mode, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
net = model()


def on_step(epoch: int, step: int, loss: float) -> None:
    if mode == "swap" and (epoch, step) == (1, 1):
        swap(net, noise=0.01 * rank())  # rank 1 differs: DDP's rebuild must undo that
    if mode == "die" and rank() == 1 and (epoch, step) == (2, 0):
        os._exit(3)  # killed in the middle of epoch 2


# per-rank batch 8: the global batch is 8 x 2 = 16
loader = DataLoader(dataset(), batch_size=8, shuffle=True)
checkpoint = os.path.join(out, "ck") if mode in ("full", "die", "resume") else None
result = finetune(net, loader, config=FinetuneConfig(**CONFIG), checkpoint_dir=checkpoint,
                  on_step=on_step, log=lambda _: None)
assert world_size() == 2 and is_primary() == (rank() == 0)
torch.save({"state": net.state_dict(), "resumed": result.resumed, "steps": result.steps},
           os.path.join(out, f"rank{rank()}.pt"))
"""


def _torchrun(tmp: Path, mode: str, out: Path) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True, exist_ok=True)
    (tmp / "common.py").write_text(textwrap.dedent(COMMON))
    (tmp / "worker.py").write_text(textwrap.dedent(WORKER))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "--monitor-interval", "0.1", str(tmp / "worker.py"), mode, str(out)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _ranks(out: Path) -> list[dict[str, object]]:
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def _single_process(tmp: Path, swap_at: tuple[int, int] | None) -> dict[str, torch.Tensor]:
    """One process on the global batch of 16, in the order the two ranks see it together."""
    sys.path.insert(0, str(tmp))
    try:
        import common  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp))
    data = common.dataset()
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
    net = common.model()

    def on_step(epoch: int, step: int, loss: float) -> None:
        if (epoch, step) == swap_at:
            common.swap(net, noise=0.0)

    finetune(net, DataLoader(data, batch_size=16, sampler=sampler),
             config=FinetuneConfig(**common.CONFIG), on_step=on_step, log=lambda _: None)  # fmt: skip
    del sys.modules["common"]
    return net.state_dict()


@pytest.mark.parametrize("mode", ["plain", "swap"])
def test_two_ranks_train_like_one_process_on_the_global_batch(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out"
    run = _torchrun(tmp_path, mode, out)
    assert run.returncode == 0, run.stderr[-3000:]
    zero, one = _ranks(out)
    reference = _single_process(tmp_path, (1, 1) if mode == "swap" else None)
    assert zero["steps"] == one["steps"] == 12  # 3 epochs of 32 samples per rank / 8
    for name, value in reference.items():
        # the ranks agree exactly (DDP averages the same gradients everywhere) ...
        assert torch.equal(zero["state"][name], one["state"][name]), name  # type: ignore[index]
        # ... and match one process on the same batches up to summation order
        torch.testing.assert_close(zero["state"][name], value, rtol=1e-5, atol=1e-5)  # type: ignore[index]
    if mode == "swap":
        assert reference["0.weight"].shape == (8, 8)


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    full = _torchrun(tmp_path, "full", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    died = _torchrun(tmp_path, "die", tmp_path / "cut")
    assert died.returncode != 0
    saved = torch.load(tmp_path / "cut" / "ck" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and len(saved["rng"]) == 2  # every rank's RNG state
    resumed = _torchrun(tmp_path, "resume", tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = _ranks(tmp_path / "full")[0]["state"]
    for rank_result in _ranks(tmp_path / "cut"):
        assert rank_result["resumed"] and rank_result["steps"] == 8  # epochs 2 and 3 only
        state = rank_result["state"]
        assert all(torch.equal(state[k], v) for k, v in reference.items())  # type: ignore[index]


def test_helpers_without_a_process_group() -> None:
    assert dist_helpers.is_primary() and dist_helpers.world_size() == 1
    assert dist_helpers.rank() == 0 and not dist_helpers.is_distributed()
    module = nn.Linear(2, 2)
    assert dist_helpers.wrap(module, torch.device("cpu")) is module
    loader = DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2)
    assert dist_helpers.shard_loader(loader, seed=0) is loader
    assert dist_helpers.any_true(True) and dist_helpers.all_sum(1.0, 2) == [1.0, 2.0]
