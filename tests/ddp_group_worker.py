"""Run by test_group_transform under torchrun: one DDP step on kdensenet-bc-40 and on a grouped model.

Rank 0 saves each model's gradients; the test compares them with per-shard single-process gradients.
"""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from achroma.data import BatchLoader
from achroma.training import TrainConfig, make_optimizer, train_step
from achroma.training.distributed import setup_distributed, unwrap, wrap_model

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_group_transform import ddp_batch, ddp_models  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    device = torch.device("cpu")
    info = setup_distributed(device)
    grads = {}
    for kind, model in ddp_models().items():
        model = wrap_model(model, info, device)
        loader = BatchLoader(ddp_batch(), batch_size=4, normalize="cifar", rank=info.rank, world_size=info.world_size)
        x, y = next(iter(loader))
        train_step(model, x, y, make_optimizer(model, TrainConfig(lr=0.0, weight_decay=0.0)))
        grads[kind] = {n: p.grad.clone() for n, p in unwrap(model).named_parameters()}
    if info.is_main:
        torch.save(grads, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
