"""`achroma train`: supervised training with checkpoints every epoch and resume (torchrun for DDP)."""
from __future__ import annotations

from pathlib import Path

from .common import (add_data_args, add_model_args, add_optimizer_args, load_train_test, resolve_model,
                     train_config)


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model (SGD, cosine/step schedule, CIFAR augmentation; torchrun for DDP)")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--out", required=True, help="output folder: last.* every epoch (resumed from), model.* at the end")
    add_optimizer_args(p)
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT holds a resumable state")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..training import train

    if args.weights and Path(args.out).resolve() == Path(args.weights).resolve().parent:
        raise ValueError("--out must not be the folder of the input weights (nothing is overwritten)")
    model, mode, normalize, _ = resolve_model(args)
    train_set, test_set = load_train_test(args)
    config = train_config(args, mode, normalize)
    history = train(model, train_set, config, test_set=test_set, out_dir=args.out, resume=not args.no_resume)
    final = history["epochs"][-1] if history["epochs"] else {}
    if "test_accuracy" in final:
        print(f"final test accuracy {final['test_accuracy']:.4f} after {final['epoch']} epochs; "
              f"checkpoint {Path(args.out) / 'model.safetensors'}")
    return 0
