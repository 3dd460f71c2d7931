"""Color teacher -> gray student on CIFAR-10 (JPEG): distillation vs labels alone at the same budget.

The teacher (a color checkpoint, e.g. the demo's `seed-densenet-tiny`) sees color; a fresh 1-channel
student of the same family sees the luma of the very same augmented images. The label-only student
starts from the same weights and sees the same batches (same seed) for the same epochs.

    python benchmarks/kd_cifar_gray.py --teacher src/achroma/assets/demo-model --limit 1000 --epochs 2
"""
from __future__ import annotations

import argparse
import time

import torch

from achroma.data import load_dataset
from achroma.distill import distill
from achroma.io import load_checkpoint
from achroma.models import create_model
from achroma.training import TrainConfig, count_parameters, evaluate, train


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="a color checkpoint of ours")
    p.add_argument("--student", default=None, help="student registry name (default: the teacher's family)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--limit", type=int, default=1000, help="training images per class")
    p.add_argument("--test-limit", type=int, default=None, help="test images per class (default: all)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--loss", default="kd", choices=["mse", "kd"])
    p.add_argument("--T", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()

    teacher, meta = load_checkpoint(args.teacher)
    t_norm = meta.get("normalization") or "cifar"
    train_set = load_dataset(args.dataset, "train").stratified_subset(args.limit, seed=args.seed)
    test_set = load_dataset(args.dataset, "test")
    if args.test_limit:
        test_set = test_set.stratified_subset(args.test_limit, seed=args.seed)
    name = test_set.extra.get("display_name", args.dataset)
    epochs_seen = len(meta.get("training", {}).get("epochs", []))
    print(f"{name}: {len(train_set)} train images, {len(test_set)} test; teacher {meta['arch']['name']} "
          f"({epochs_seen} epochs), {args.threads} thread(s)")
    t_color = evaluate(teacher, test_set, mode="color", normalize=t_norm, progress=False)["accuracy"]
    t_gray3 = evaluate(teacher, test_set, mode="gray3", normalize=t_norm, progress=False)["accuracy"]

    arch = {k: v for k, v in meta["arch"].items() if k not in ("name", "in_chans")}
    torch.manual_seed(args.seed)
    student = create_model(args.student or meta["arch"]["name"], **{**arch, "in_chans": 1})
    baseline = create_model(args.student or meta["arch"]["name"], **{**arch, "in_chans": 1})
    baseline.load_state_dict(student.state_dict())
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, mode="gray", normalize=t_norm,
                         augment=True, seed=args.seed, device="cpu")
    t0 = time.time()
    distill(student, teacher, train_set, config, teacher_mode="color", student_mode="gray", teacher_normalize=t_norm,
            loss=args.loss, T=args.T, alpha=args.alpha, evaluate_teacher=False)
    t_kd = time.time() - t0
    t0 = time.time()
    train(baseline, train_set, config)
    t_ce = time.time() - t0
    s_kd = evaluate(student, test_set, mode="gray", normalize=t_norm, progress=False)["accuracy"]
    s_ce = evaluate(baseline, test_set, mode="gray", normalize=t_norm, progress=False)["accuracy"]
    loss = "logit MSE" if args.loss == "mse" else f"KD, T={args.T:g}, alpha={args.alpha:g}"
    budget = f"{args.epochs} epochs on {len(train_set):,} images"
    print()
    print("| model | input | parameters | training | test accuracy |")
    print("|---|---|---:|---|---:|")
    print(f"| teacher | color | {count_parameters(teacher):,} | {epochs_seen} epochs (its checkpoint) | {t_color:.4f} |")
    print(f"| teacher | gray3 (luma in all 3 channels) | {count_parameters(teacher):,} | none | {t_gray3:.4f} |")
    print(f"| student, distilled ({loss}) | gray (1 channel) | {count_parameters(student):,} | {budget}, "
          f"{t_kd:.0f} s | {s_kd:.4f} |")
    print(f"| student, labels only | gray (1 channel) | {count_parameters(baseline):,} | {budget}, "
          f"{t_ce:.0f} s | {s_ce:.4f} |")
    print(f"total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
