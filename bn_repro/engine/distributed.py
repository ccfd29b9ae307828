"""Data-parallel training across processes started by torchrun (DDP).

    torchrun --standalone --nproc_per_node=2 -m bn_repro.train data=synthetic norm=custom

Each rank takes its share of every global batch (data.batch_size is the global batch); gradients are
averaged by DDP; each norm layer follows its registry rule (bn_repro/norms/sync.py: the custom BatchNorm
all-reduces its per-channel sums so its statistics are those of the global batch, built-in BN becomes
nn.SyncBatchNorm on GPU). Only rank 0 writes files and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

import torch
import torch.distributed as dist
from torch import nn

from bn_repro.engine import interrupts

RUN_STAMP_ENV = "BN_REPRO_RUN_STAMP"


@dataclass(frozen=True)
class Replicas:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0 under torchrun (read from the environment: before the process group exists), else True."""
    return int(os.environ.get("RANK", "0")) == 0


def init_replicas() -> Replicas:
    """Join the process group torchrun describes in the environment (once); a single process otherwise."""
    if not launched_by_torchrun():
        return Replicas()
    if not dist.is_initialized():
        interrupts.die_with_parent()
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # gloo for CPU tensors and objects, nccl for CUDA tensors.
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return Replicas(rank=dist.get_rank(), world_size=dist.get_world_size())


def share_run_stamp() -> None:
    """Give every rank rank 0's timestamp, so Hydra resolves the same run dir on all of them."""
    if not launched_by_torchrun() or RUN_STAMP_ENV in os.environ:
        return
    init_replicas()
    stamp = [datetime.now().strftime("%Y-%m-%d_%H-%M-%S")]
    dist.broadcast_object_list(stamp, src=0)
    os.environ[RUN_STAMP_ENV] = stamp[0]


def local_share(global_batch: torch.Tensor, replicas: Replicas) -> torch.Tensor:
    per_rank = len(global_batch) // replicas.world_size
    return global_batch[replicas.rank * per_rank : (replicas.rank + 1) * per_rank]


def check_batch_split(batch_size: int, replicas: Replicas) -> None:
    if batch_size % replicas.world_size:
        raise ValueError(
            f"data.batch_size={batch_size} does not split evenly over {replicas.world_size} processes; "
            f"choose a global batch that is a multiple of the process count"
        )


def sum_over_replicas(tensor: torch.Tensor, replicas: Replicas) -> torch.Tensor:
    if replicas.active:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def max_over_replicas(tensor: torch.Tensor, replicas: Replicas) -> torch.Tensor:
    if replicas.active:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    if device.type != "cuda":
        return nn.parallel.DistributedDataParallel(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
