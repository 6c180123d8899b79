"""Data-parallel plumbing so `prunekit.train.loop.train` runs unchanged under ``torchrun``.

`setup` reads the ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` variables that ``torchrun`` exports, opens the process
group (gloo on CPU, nccl on CUDA) and picks the device; without them everything degrades to one process. The loop
then wraps the model with `wrap` (DistributedDataParallel), shards data with `ResumableSampler` (a seeded
``DistributedSampler`` that can skip the batches already seen when resuming mid-epoch) and averages metrics with
`mean_over_ranks`.

Data order: epoch ``e`` uses ``randperm(N, seed + e)``; rank ``r`` of ``W`` takes positions ``r, r+W, r+2W, ...``.
With per-rank batch ``b`` the ranks' ``k``-th batches together hold exactly the single-process ``k``-th batch of a
``W*b`` run (when ``N`` is a multiple of ``W*b``), so a DDP run and a one-process run with the same global batch
take the same optimizer steps.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


@dataclass
class DistEnv:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 when not distributed).
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this machine (selects the CUDA device).
        device: the torch device this process trains on.
        owns_group: True when `setup` opened the process group (so `teardown` closes it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(preference)


def setup(device: str = "auto") -> DistEnv:
    """Detect torchrun's environment, open the process group if needed, choose the device.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or an explicit ``"cuda:1"``. Under torchrun, ``"cuda"`` means
            ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = _pick_device(device, local if world > 1 else 0)
    if world <= 1:
        return DistEnv(device=dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)


def teardown(env: DistEnv) -> None:
    """Close the process group if `setup` opened it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """Wrap in DistributedDataParallel when distributed (parameters are broadcast from rank 0)."""
    if not env.distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class ResumableSampler(DistributedSampler):
    """A seeded `DistributedSampler` (also for one process) that can skip this rank's first `skip` samples.

    Args:
        dataset: the training set.
        env: the process layout.
        seed: shuffling seed; epoch ``e`` uses ``seed + e``.
        skip: samples of this rank already consumed in the current epoch (batches done x per-rank batch).
    """

    def __init__(self, dataset: Dataset, env: DistEnv, seed: int, skip: int = 0):
        super().__init__(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


def broadcast_params(params: Iterable[torch.nn.Parameter], env: DistEnv) -> None:
    """Copy rank 0's values into every rank (for trainable tensors living outside the DDP module)."""
    if env.distributed:
        for p in params:
            dist.broadcast(p.data, src=0)


def average_grads(params: Iterable[torch.nn.Parameter], env: DistEnv) -> None:
    """All-reduce-average the gradients of parameters that DDP does not manage."""
    if not env.distributed:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(env.world_size)


def mean_over_ranks(values: Dict[str, float], env: DistEnv) -> Dict[str, float]:
    """Average scalar metrics over ranks (identity for one process)."""
    if not env.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    t /= env.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def barrier(env: DistEnv) -> None:
    if env.distributed:
        if env.device.type == "cuda":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()
