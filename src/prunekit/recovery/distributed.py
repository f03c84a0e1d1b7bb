"""Data-parallel training under ``torchrun``: what ``finetune`` needs, and helpers for others.

``torchrun --nproc-per-node N script.py`` starts N processes with ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK`` and a rendezvous address in their environment. ``finetune`` then initialises
the process group (``init_from_env``: gloo on the CPU, nccl on CUDA) unless the caller did,
wraps the model in ``DistributedDataParallel`` (gradients averaged over the ranks at every
step) and gives a map-style DataLoader a ``DistributedSampler`` (``shard_loader``): each rank
reads its own share of every epoch, ``batch_size`` samples per step, so **the global batch
is batch_size x world size** -- halve the per-rank batch on two processes to keep a recipe's
batch. The sampler is seeded from ``FinetuneConfig.seed`` and told the epoch each epoch.
Only rank 0 writes files (``is_primary``); every rank reads the checkpoint on resume.

Structured pruning replaces parameters with new, smaller tensors: a DDP wrapper (whose
reducer holds the old tensors) and an optimizer built before are stale afterwards.
``rebuild_after_swap`` makes both anew; building DDP broadcasts rank 0's tensors, so the
ranks agree again even if pruning chose differently on each.

Without a process group (or with one rank) every helper is a no-op: ``is_primary()`` is True,
``world_size()`` 1, ``rank()`` 0.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer

from prunekit.recovery._optim import Layout, group_layout, rebuild_optimizer

__all__ = [
    "all_sum",
    "any_true",
    "barrier",
    "broadcast_object",
    "gather_objects",
    "init_from_env",
    "is_distributed",
    "is_primary",
    "rank",
    "rebuild_after_swap",
    "shard_loader",
    "unwrap",
    "world_size",
    "wrap",
]


def is_distributed() -> bool:
    """A process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_primary() -> bool:
    """Whether this process writes files and prints: rank 0, or the only process."""
    if is_distributed():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0  # torchrun, before the group exists


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), if not joined yet:
    nccl for a CUDA ``device``, gloo otherwise. Returns whether training is distributed."""
    wanted = int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available()
    if wanted and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        # leave the group before the interpreter exits: a gloo group still alive then has
        # its threads killed mid-flight ("terminate called without an active exception",
        # SIGABRT) after the work is done, and torchrun reports the run as failed
        atexit.register(_leave_group)
    return is_distributed()


def _leave_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _sync_device() -> torch.device:
    """Where the small tensors of collectives live: nccl needs them on this rank's GPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def any_true(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (so that all ranks stop together)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_sync_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_sum(*values: float) -> list[float]:
    """The sums over the ranks of ``values`` (float64)."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=_sync_device())
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` when distributed (else ``module`` itself).
    Building the wrapper copies rank 0's parameters and buffers to every rank."""
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    if device.type != "cuda":
        return DistributedDataParallel(module)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(module, device_ids=[index])


def unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def rebuild_after_swap(
    module: nn.Module, optimizer: Optimizer, layout: Layout, device: torch.device
) -> tuple[nn.Module, Optimizer, Layout]:
    """After pruning replaced parameters of ``module``: a new DDP wrapper (or ``module``
    itself when not distributed), an optimizer like ``optimizer`` over the current tensors
    (``layout``: its groups by parameter name, taken before the swap), and the new layout."""
    new = rebuild_optimizer(module, optimizer, layout)
    wrapped = wrap(module, device)
    return wrapped, new, group_layout(module, new)


def shard_loader(loader: Any, seed: int) -> Any:
    """A DataLoader like ``loader`` whose sampler gives this rank its share of each epoch
    (``DistributedSampler``, shuffled when ``loader`` shuffles, seeded with ``seed``).
    Unchanged when not distributed, when it already shards, or when it is not a DataLoader
    over a map-style dataset (an iterable dataset must shard itself)."""
    from torch.utils.data import DataLoader, IterableDataset, RandomSampler
    from torch.utils.data.distributed import DistributedSampler

    if not is_distributed() or not isinstance(loader, DataLoader):
        return loader
    if isinstance(loader.dataset, IterableDataset) or isinstance(
        loader.sampler, DistributedSampler
    ):
        return loader
    sampler: DistributedSampler[Any] = DistributedSampler(
        loader.dataset,
        num_replicas=world_size(),
        rank=rank(),
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
        drop_last=loader.drop_last,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
    )
