"""Run under torchrun by `ddp_launch.run_ddp`: one DDP training step per model of a suite, the
gradients saved by rank 0. Suites: 'training' (test_training's models), 'grouped' (test_group_transform's)."""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from achroma.data import BatchLoader
from achroma.training import TrainConfig, make_optimizer, train_step
from achroma.training.distributed import setup_distributed, unwrap, wrap_model

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from ddp_launch import suite_models, tiny_batch  # noqa: E402


def main(suite: str, out: str) -> None:
    torch.set_num_threads(1)
    device = torch.device("cpu")
    info = setup_distributed(device)
    grads = {}
    for kind, model in suite_models(suite).items():
        model = wrap_model(model, info, device)
        loader = BatchLoader(tiny_batch(), batch_size=4, normalize="cifar", rank=info.rank, world_size=info.world_size)
        x, y = next(iter(loader))
        train_step(model, x, y, make_optimizer(model, TrainConfig(lr=0.0, weight_decay=0.0)))
        grads[kind] = {n: p.grad.clone() for n, p in unwrap(model).named_parameters()}
    if info.is_main:
        torch.save(grads, out)
    # Both ranks leave together: a rank that tore down gloo while the other still used it aborted
    # ("terminate called without an active exception") once in a full run.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
