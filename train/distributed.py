"""torchrun / DistributedDataParallel plumbing: one process per device, gloo on CPU, nccl on CUDA.

Read from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR); a plain run is
rank 0 of 1 without a process group. A run launched by torchrun joins a process group and trains
under DistributedDataParallel even with one rank (``--nproc_per_node 1``), so that a one-GPU
torchrun exercises the same NCCL path as a many-GPU one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (its rendezvous variables are set)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one rank: collectives are needed to agree."""
        return self.world_size > 1

    @property
    def uses_process_group(self) -> bool:
        """A process group and DistributedDataParallel: any torchrun launch, one rank included."""
        return self.enabled or self.launched


def dist_info_from_env() -> DistInfo:
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        launched="WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ,
    )


def process_group_backend(device: torch.device) -> str:
    """The collective back end for ``device``: nccl on CUDA, gloo on CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group (env:// rendezvous) if torchrun launched this process."""
    if not info.uses_process_group or dist.is_initialized():
        return
    backend = process_group_backend(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_float(value: float | None, info: DistInfo, device: torch.device) -> float | None:
    """Rank 0's value on every rank (NaN stands for None)."""
    if not info.enabled:
        return value
    t = torch.tensor([float("nan") if value is None else value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    v = float(t.item())
    return None if v != v else v


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def any_rank_flags(flags: list[bool], info: DistInfo, device: torch.device) -> list[bool]:
    """Each flag OR-ed over the ranks, all in one all-reduce (every rank must call it)."""
    if not info.enabled:
        return list(flags)
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (small, e.g. a loader's generator state), in rank order."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
