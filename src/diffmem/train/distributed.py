"""DistributedDataParallel plumbing for ``torchrun``: process group set-up and small collectives.

One process by default. Under ``torchrun --nproc_per_node=K`` (``WORLD_SIZE`` > 1 in the
environment) the process group is created with NCCL on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment; (0, 1, 0) in one process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init(device: torch.device) -> bool:
    """Join the process group when running under torchrun; returns whether training is distributed."""
    _, size, _ = world()
    if size <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def mean(t: torch.Tensor) -> torch.Tensor:
    """Average of ``t`` over all processes (identity in one process)."""
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())
