"""`achroma train`: supervised training with checkpoints every epoch and resume (torchrun for DDP)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .common import (add_data_args, add_model_args, add_optimizer_args, limit_calibration_and_test, load_train_test,
                     resolve_model, train_config)


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model (SGD, cosine/step schedule, CIFAR augmentation; torchrun for DDP)")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--out", required=True, help="output folder: last.* every epoch (resumed from), model.* at the end")
    add_optimizer_args(p)
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT holds a resumable state")
    p.add_argument("--reinit", action="store_true",
                   help="keep the architecture of --weights (merged, grouped, ...) but draw every weight afresh: "
                        "the same architecture trained from scratch")
    p.add_argument("--eval-every", type=int, default=1, help="score the test set every N epochs (and after the last)")
    p.add_argument("--test-limit", type=int, default=None, help="score on N test images of each class (seeded)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..surgery import reinitialize
    from ..training import train

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.eval_every < 1:
        raise ValueError(f"--eval-every must be at least 1, got {args.eval_every}")
    if args.weights and Path(args.out).resolve() == Path(args.weights).resolve().parent:
        raise ValueError("--out must not be the folder of the input weights (nothing is overwritten)")
    if args.reinit and not args.weights:
        raise ValueError("--reinit re-initializes the architecture of --weights; without them the model is new anyway")
    model, mode, normalize, _ = resolve_model(args)
    if args.reinit:
        reinitialize(model, seed=args.seed)
    train_set, test_set = limit_calibration_and_test(args, *load_train_test(args))  # --test-limit
    config = replace(train_config(args, mode, normalize), eval_every=args.eval_every)
    history = train(model, train_set, config, test_set=test_set, out_dir=args.out, resume=not args.no_resume)
    final = history["epochs"][-1] if history["epochs"] else {}
    if "test_accuracy" in final:
        print(f"final test accuracy {final['test_accuracy']:.4f} after {final['epoch']} epochs; "
              f"checkpoint {Path(args.out) / 'model.safetensors'}")
    return 0
