"""Why ls-refit followed by training can fall below training alone: gradients and ridge, on a sweep's model.

Takes one merged model a sweep saved (`models/<by>-<target>-<method>.safetensors`), refits it
(ls-refit) at each --ridge, and prints for each: accuracy after the refit, the gradient norm of the
first training batch (cross-entropy, train mode) of the conv with the largest one, the spread of
the train-mode logits against eval mode, and accuracy after one distillation epoch. The merged model
without a refit is measured the same way first. Nothing is written.

    PYTHONPATH=src python scripts/refit_stability.py runs/sweep-demo macs-0.5-activations \
        --teacher src/achroma/assets/demo-model.safetensors --dataset tar:src/achroma/assets/demo-cifar10-jpeg.tar.gz \
        --ridge 1e-4,1e-2
"""
from __future__ import annotations

import argparse
import copy
import json
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from achroma.data import BatchLoader, load_dataset
from achroma.fold import GRAY_NORMALIZATION
from achroma.io import load_checkpoint
from achroma.pipeline import RepairConfig, repair_model
from achroma.pipeline.merging import refit_merges
from achroma.training import evaluate


def first_batch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[str, float, float, float]:
    """(conv with the largest gradient, its norm, train-mode logit std, eval-mode logit std); model untouched."""
    work = copy.deepcopy(model)
    with torch.no_grad():
        eval_std = float(work.eval()(x).std())
    work.train()
    out = work(x)
    F.cross_entropy(out.float(), y).backward()
    name, norm = max(((n, float(p.grad.norm())) for n, p in work.named_parameters()
                      if p.grad is not None and p.dim() == 4), key=lambda t: t[1])  # conv weights
    return name, norm, float(out.detach().std()), eval_std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("model", help="a merged model's name in the sweep's models/, e.g. macs-0.5-activations")
    parser.add_argument("--teacher", required=True, help="the sweep's color model (the distillation teacher)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--ridge", default="1e-4,1e-2", help="ridge values of the refit to compare")
    parser.add_argument("--calib-limit", type=int, default=None, help="as the sweep's (repair images per class)")
    parser.add_argument("--test-limit", type=int, default=None, help="as the sweep's (test images per class)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    merged, meta = load_checkpoint(args.sweep / "models" / f"{args.model}.safetensors")
    reference, _ = load_checkpoint(args.sweep / "models" / "uncompressed.safetensors")
    teacher, teacher_meta = load_checkpoint(args.teacher)
    seed = json.loads((args.sweep / "sweep.json").read_text())["merge"]["seed"]
    train, test = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    if args.calib_limit:
        train = train.stratified_subset(args.calib_limit, seed=seed)
    if args.test_limit:
        test = test.stratified_subset(args.test_limit, seed=seed)
    merges = refit_merges(meta["sweep"]["layers"])
    x, y = next(iter(BatchLoader(train, 32, mode="gray", normalize="none", shuffle=True, seed=seed)))

    def score(model: torch.nn.Module) -> float:
        return evaluate(model.eval(), test, mode="gray", normalize=GRAY_NORMALIZATION, progress=False)["accuracy"]

    def distilled(model: torch.nn.Module) -> float:
        return score(repair_model(model, "distill", train, RepairConfig(), seed=seed, teacher=teacher.eval(),
                                  teacher_normalize=teacher_meta["normalization"]))

    print(f"{args.sweep / 'models' / args.model}: {len(train):,} repair images, {len(test):,} test images")
    name, norm, train_std, eval_std = first_batch(merged, x, y)
    print(f"no refit: accuracy {score(merged):.4f}; first batch: largest conv gradient {norm:.1f} ({name}), "
          f"logit std train {train_std:.1f} / eval {eval_std:.1f}; after distill {distilled(merged):.4f}")
    for ridge in (float(r) for r in args.ridge.split(",")):
        refit = repair_model(merged, "ls-refit", train, replace(RepairConfig(), refit_ridge=ridge), seed=seed,
                             reference=reference.eval(), merges=merges)
        name, norm, train_std, eval_std = first_batch(refit, x, y)
        print(f"ls-refit ridge {ridge:g}: accuracy {score(refit):.4f}; first batch: largest conv gradient "
              f"{norm:.1f} ({name}), logit std train {train_std:.1f} / eval {eval_std:.1f}; "
              f"after distill {distilled(refit):.4f}", flush=True)


if __name__ == "__main__":
    main()
