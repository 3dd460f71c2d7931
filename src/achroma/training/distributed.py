"""Multi-process training with torchrun (DDP): NCCL on CUDA, gloo on CPU.

On CUDA, BatchNorm becomes SyncBatchNorm so statistics span the global batch. SyncBatchNorm does
not run on CPU: there each process normalizes with its own shard's statistics, which is exactly
gradient accumulation over the shards.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` when more than one process trains."""
    if info.world_size <= 1:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def current() -> DistInfo:
    """The process group this process has already joined, or a single process; never joins one."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Each tensor replaced, in place, by its sum over the processes (nothing for a single process)."""
    if current().world_size > 1:
        for t in tensors:
            dist.all_reduce(t)


def average_buffers(model: nn.Module) -> nn.Module:
    """Floating-point buffers (BN running statistics) averaged over the processes. DDP broadcasts rank 0's
    buffers before each forward and each rank then updates them with its own shard, so after training
    they differ a little between ranks: averaged, every rank holds the same model."""
    world = current().world_size
    if world > 1:
        for buf in model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(world)
    return model
