"""The Keras distillation seed's size curve, on Fashion-MNIST (MNIST is not on these machines).

Trains the seed's teacher (`kd-teacher`), then for each hidden size a `kd-student` distilled by
logit MSE and the same student (same initial weights, same batches, same epochs and schedule)
trained on the labels alone; prints a table and saves accuracy vs parameters (log x).

    python benchmarks/kd_size_curve.py            # defaults: ~15-20 min on 1 CPU thread
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import achroma.models.kd_mnist  # noqa: F401  (registers kd-teacher / kd-student)
from achroma.data import load_dataset
from achroma.distill import distill
from achroma.io import load_checkpoint, save_checkpoint
from achroma.models import create_model
from achroma.training import TrainConfig, count_parameters, evaluate, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--hidden", default="1,2,6,16,64", help="student hidden sizes, comma-separated")
    p.add_argument("--teacher-epochs", type=int, default=2)
    p.add_argument("--student-epochs", type=int, default=1)
    p.add_argument("--teacher-lr", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=0.01, help="students' learning rate (tiny ReLU layers die at 0.05+)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--normalize", default="half")
    p.add_argument("--limit", type=int, default=None, help="train on N images per class (quick runs)")
    p.add_argument("--teacher", default=None, help="reuse a teacher checkpoint instead of training one")
    p.add_argument("--save-teacher", default=None, help="save the trained teacher here (checkpoint path)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default="docs/figures/kd-fashion-mnist.png")
    return p.parse_args(argv)


def config(args: argparse.Namespace, epochs: int, lr: float) -> TrainConfig:
    """One recipe for every run: SGD + Nesterov, cosine schedule, no augmentation (as in the seed)."""
    return TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=lr, mode="gray", normalize=args.normalize,
                       augment=False, seed=args.seed, device="cpu")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    train_set = load_dataset(args.dataset, "train")
    test_set = load_dataset(args.dataset, "test")
    if args.limit:
        train_set = train_set.stratified_subset(args.limit, seed=args.seed)
    name = test_set.extra.get("display_name", args.dataset)
    print(f"{name}: {len(train_set)} train / {len(test_set)} test images, {args.threads} thread(s)")

    if args.teacher:
        teacher, _ = load_checkpoint(args.teacher)
    else:
        torch.manual_seed(args.seed)
        teacher = create_model("kd-teacher", in_chans=1, num_classes=test_set.num_classes)
        train(teacher, train_set, config(args, args.teacher_epochs, args.teacher_lr), test_set=test_set)
        if args.save_teacher:
            save_checkpoint(args.save_teacher, teacher, {"mode": "gray", "normalization": args.normalize})
    t_params = count_parameters(teacher)
    t_acc = evaluate(teacher, test_set, mode="gray", normalize=args.normalize, progress=False)["accuracy"]
    print(f"teacher: {t_params:,} parameters, test accuracy {t_acc:.4f}")

    rows = []
    for hidden in (int(h) for h in args.hidden.split(",")):
        torch.manual_seed(args.seed + hidden)
        student = create_model("kd-student", in_chans=1, num_classes=test_set.num_classes, hidden=hidden)
        baseline = create_model("kd-student", in_chans=1, num_classes=test_set.num_classes, hidden=hidden)
        baseline.load_state_dict(student.state_dict())  # same start for both
        cfg = config(args, args.student_epochs, args.lr)
        distill(student, teacher, train_set, cfg, teacher_mode="gray", student_mode="gray", loss="mse",
                teacher_normalize=args.normalize, student_normalize=args.normalize, evaluate_teacher=False)
        train(baseline, train_set, cfg)
        acc_kd = evaluate(student, test_set, mode="gray", normalize=args.normalize, progress=False)["accuracy"]
        acc_ce = evaluate(baseline, test_set, mode="gray", normalize=args.normalize, progress=False)["accuracy"]
        params = count_parameters(student)
        rows.append((hidden, params, t_params / params, acc_kd, acc_ce))
        print(f"hidden {hidden}: {params:,} parameters, distilled {acc_kd:.4f}, labels only {acc_ce:.4f}")

    print()
    print("| hidden units | parameters | compression vs teacher | accuracy, distilled (logit MSE) | accuracy, labels only |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| 128 (teacher) | {t_params:,} | 1.0x | {t_acc:.4f} (teacher, {args.teacher_epochs} epochs) | |")
    for hidden, params, rate, acc_kd, acc_ce in rows:
        print(f"| {hidden} | {params:,} | {rate:.1f}x | {acc_kd:.4f} | {acc_ce:.4f} |")
    ok = [r for r in rows if r[3] >= 0.95 * t_acc]
    if ok:
        h, params, rate, acc, _ = min(ok, key=lambda r: r[1])
        print(f"smallest distilled student at or above 95% of the teacher's accuracy ({0.95 * t_acc:.4f}): "
              f"hidden {h}, {params:,} parameters, {rate:.1f}x smaller, accuracy {acc:.4f}")
    else:
        print(f"no distilled student reached 95% of the teacher's accuracy ({0.95 * t_acc:.4f})")
    if args.plot:
        plot(rows, t_params, t_acc, name, args, Path(args.plot))
        print(f"plot: {args.plot}")
    print(f"total {time.time() - started:.0f} s")


def plot(rows: list[tuple], t_params: int, t_acc: float, name: str, args: argparse.Namespace, path: Path) -> None:
    """Accuracy against parameter count (log x): distilled, labels only, the teacher, 95% of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    params = [r[1] for r in rows]
    ax.plot(params, [r[3] for r in rows], "o-", label="student, distilled (logit MSE)")
    ax.plot(params, [r[4] for r in rows], "s--", label="student, labels only")
    ax.plot([t_params], [t_acc], "k*", markersize=12, label=f"teacher ({args.teacher_epochs} epochs)")
    ax.axhline(0.95 * t_acc, color="gray", linewidth=0.8, linestyle=":", label="95% of the teacher")
    for hidden, p, _, acc, _ in rows:
        ax.annotate(f"h={hidden}", (p, acc), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{name}: students of the Keras KD seed, {args.student_epochs} epoch(s) each", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
