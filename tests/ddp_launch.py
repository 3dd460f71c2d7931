"""Two CPU processes under torchrun for the DDP tests: the launcher, the shared batch, the model suites."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn as nn

from achroma.data import ImageDataset


def tiny_batch(n: int = 8) -> ImageDataset:
    """8 seeded random 16x16 color images of 3 classes: one batch, sharded 4 + 4 over two ranks."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    return ImageDataset(images, torch.arange(n) % 3, ["a", "b", "c"], name="tiny")


def suite_models(suite: str) -> dict[str, nn.Module]:
    """The models a DDP test steps, rebuilt identically in every process."""
    if suite == "training":
        from test_training import make_model

        return {kind: make_model(kind) for kind in ("bn", "no-bn")}
    if suite == "grouped":
        from test_group_transform import ddp_models

        return ddp_models()
    raise ValueError(f"unknown DDP suite {suite!r}")


def torchrun(args: list[str], nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node nproc ARGS` (a script, or -m module ...) on CPU processes, 1 thread each."""
    # A port that was free a moment ago on the loopback interface, rather than --standalone's
    # rendezvous, which failed once under load; gloo is told to stay on the loopback too.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", *args]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def run_ddp(suite: str, out: Path) -> dict:
    """Run tests/ddp_worker.py for `suite` on 2 CPU processes; the gradients rank 0 saved."""
    result = torchrun([str(Path(__file__).with_name("ddp_worker.py")), suite, str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out, weights_only=True)
