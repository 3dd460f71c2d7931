"""The Keras distillation seed, run as the seed ran it, on Fashion-MNIST (MNIST is not on these machines).

The seed's recipe: the teacher of its table (conv 32, conv 64, max-pool, dropout, dense 128, dropout,
dense 10) trained with Adadelta (Keras' classic lr 1.0, rho 0.95) for 12 epochs; students with dense
`hidden` units and dropout 0.2, regressing the teacher's logits (MSE) with Adadelta, to convergence.
Convergence here: early stopping on a validation split of 5,000 training images (500 a class) that
no model trains on, patience in epochs, best epoch kept; the test set chooses nothing.

Stages (each resumes from what the last run left in --out):
  teacher  train the teacher (or reuse --out/teacher); its logits are the targets of every student.
  frozen   the whole size curve, 3 seeds, on the teacher's own conv features (frozen, computed once):
           the seed's summary keeps the teacher's two convs and replaces the dense layers, so a student
           is that head. Every hidden size and loss of one seed trains at once as parallel heads
           (disjoint parameters, same batches, same dropout draws on the shared input): identical to
           separate runs, at a fraction of the time. Losses: logit MSE, Hinton KD at T=4 and at each T
           of a small grid (alpha 0.9, with labels), labels only; all from the same initial weights.
  e2e      whole students (convs trained too) at the seed's size, logit MSE against labels only,
           same initial weights and batches (the other reading of the seed; 2.5 min an epoch on 1 core).
  report   the table (mean and spread over seeds), the smallest student at >= 95% of the teacher, the
           plot (accuracy against parameters, log x).

    python benchmarks/kd_seed_recipe.py --stage teacher --out runs/kd-seed
    python benchmarks/kd_seed_recipe.py --stage frozen --out runs/kd-seed
    python benchmarks/kd_seed_recipe.py --stage e2e --out runs/kd-seed
    python benchmarks/kd_seed_recipe.py --stage report --out runs/kd-seed
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import achroma.models.kd_mnist  # noqa: F401  (registers kd-teacher / kd-student)
from achroma.data import BatchLoader, ImageDataset, load_dataset
from achroma.distill import distill
from achroma.distill.losses import hinton_kd
from achroma.io import atomic_write_json, is_checkpoint, load_checkpoint
from achroma.models import create_model
from achroma.training import TrainConfig, count_parameters, evaluate, train

NORMALIZE = "none"  # Keras' examples feed x / 255


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=["teacher", "frozen", "e2e", "report"])
    p.add_argument("--out", default="runs/kd-seed")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--hidden", default="1,2,4,6,8,16,32,64")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--grid", default="1,2,8,16", help="Hinton KD temperatures tried besides T=4")
    p.add_argument("--grid-hidden", default="6", help="sizes at which the grid is tried ('all' for every size)")
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--max-epochs", type=int, default=40, help="students' cap (frozen stage)")
    p.add_argument("--patience", type=int, default=5, help="frozen stage: epochs without a better val accuracy")
    p.add_argument("--e2e-hidden", type=int, default=6)
    p.add_argument("--e2e-max-epochs", type=int, default=10)
    p.add_argument("--e2e-patience", type=int, default=3)
    p.add_argument("--e2e-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--val-per-class", type=int, default=500)
    p.add_argument("--limit", type=int, default=None, help="train on N images per class (smoke runs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plot", default="docs/figures/kd-seed-recipe-fashion-mnist.png")
    p.add_argument("--merge-from", action="append", default=[],
                   help="report: also read the frozen.json of this folder (seeds run as separate processes)")
    return p.parse_args(argv)


def split_train_val(train_set: ImageDataset, per_class: int, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """Carve a class-balanced validation split out of the training set (disjoint, seeded)."""
    val, rest = train_set.stratified_split(per_class, seed)
    return rest, val


def seed_config(epochs: int, args: argparse.Namespace, seed: int = 0, patience: int | None = None) -> TrainConfig:
    """Adadelta (lr 1.0, rho 0.95), constant rate, no weight decay, no augmentation: the seed's Keras run."""
    return TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=1.0, optimizer="adadelta", schedule="constant",
                       weight_decay=0.0, mode="gray", normalize=NORMALIZE, augment=False, seed=seed, device="cpu",
                       patience=patience)


def load_data(args: argparse.Namespace):
    train_set = load_dataset(args.dataset, "train")
    test_set = load_dataset(args.dataset, "test")
    fit_set, val_set = split_train_val(train_set, args.val_per_class)
    if args.limit:
        fit_set = fit_set.stratified_subset(args.limit)
    return fit_set, val_set, test_set


def get_teacher(args: argparse.Namespace, fit_set: ImageDataset, test_set: ImageDataset) -> nn.Module:
    path = Path(args.out) / "teacher" / "model"
    if is_checkpoint(path):
        teacher, _ = load_checkpoint(path)
        return teacher.eval()
    torch.manual_seed(0)
    teacher = create_model("kd-teacher", in_chans=1, num_classes=test_set.num_classes)
    t0 = time.time()
    train(teacher, fit_set, seed_config(args.teacher_epochs, args), test_set=test_set, out_dir=path.parent)
    print(f"teacher trained in {time.time() - t0:.0f} s")
    return teacher.eval()


@torch.no_grad()
def conv_features(teacher: nn.Module, dataset: ImageDataset, batch_size: int = 500) -> torch.Tensor:
    """The teacher's conv stack up to the max-pool (before its dropout), flattened: (N, 9216)."""
    stack = teacher.features[:5]  # conv, relu, conv, relu, pool
    loader = BatchLoader(dataset, batch_size, mode="gray", normalize=NORMALIZE)
    return torch.cat([stack(x).flatten(1) for x, _ in loader])


@torch.no_grad()
def logits_of(model: nn.Module, dataset: ImageDataset, batch_size: int = 500) -> torch.Tensor:
    loader = BatchLoader(dataset, batch_size, mode="gray", normalize=NORMALIZE)
    return torch.cat([model.eval()(x) for x, _ in loader])


class ParallelHeads(nn.Module):
    """Many students' heads side by side: dropout 0.25 on the shared features (the teacher's first
    dropout), then per head dense(hidden) -> ReLU -> dropout 0.2 -> dense(classes). One matmul for all;
    the heads share no parameter, so each trains exactly as it would alone."""

    def __init__(self, in_features: int, hiddens: list[int], num_classes: int, init: list[nn.Module]):
        super().__init__()
        self.hiddens = hiddens
        self.drop_in, self.drop_hidden = nn.Dropout(0.25), nn.Dropout(0.2)
        self.hidden = nn.Linear(in_features, sum(hiddens))
        self.out = nn.ModuleList(nn.Linear(h, num_classes) for h in hiddens)
        with torch.no_grad():  # each head starts from the given student's dense layers
            self.hidden.weight.copy_(torch.cat([m.hidden.weight for m in init]))
            self.hidden.bias.copy_(torch.cat([m.hidden.bias for m in init]))
            for layer, m in zip(self.out, init):
                layer.load_state_dict(m.classifier.state_dict())

    def forward(self, feats: torch.Tensor) -> list[torch.Tensor]:
        h = self.drop_hidden(torch.relu(self.hidden(self.drop_in(feats))))
        return [layer(part) for layer, part in zip(self.out, h.split(self.hiddens, dim=1))]


def head_loss(method: str, logits: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """'mse' (the seed), 'kd-T<t>' (Hinton, alpha 0.9 with labels), 'labels' (cross-entropy)."""
    if method == "mse":
        return F.mse_loss(logits, target)
    if method == "labels":
        return F.cross_entropy(logits, labels)
    return hinton_kd(logits, target, labels, T=float(method.removeprefix("kd-T")), alpha=0.9)


def run_frozen_seed(seed: int, heads: list[tuple[str, int]], hiddens: list[int], data: dict,
                    args: argparse.Namespace) -> list[dict]:
    """One seed of the frozen-feature curve: every (method, hidden) head at once, early-stopped one by one."""
    num_classes = int(data["y_fit"].max()) + 1
    students = []
    for h in hiddens:  # one initialization per size, shared by every method
        torch.manual_seed(1000 * seed + h)
        students.append(create_model("kd-student", in_chans=1, num_classes=num_classes, hidden=h))
    torch.manual_seed(seed)
    model = ParallelHeads(data["f_fit"].shape[1], [h for _, h in heads], num_classes,
                          [students[hiddens.index(h)] for _, h in heads])
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0, rho=0.95, eps=1e-7)
    best = [{"val": -1.0, "epoch": 0, "state": None} for _ in heads]
    stopped = [False] * len(heads)
    n = len(data["y_fit"])
    t0 = time.time()
    for epoch in range(1, args.max_epochs + 1):
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for start in range(0, n - args.batch_size + 1, args.batch_size):
            idx = order[start: start + args.batch_size]
            outs = model(data["f_fit"][idx])
            loss = sum(head_loss(m, o, data["t_fit"][idx], data["y_fit"][idx])
                       for (m, _), o, done in zip(heads, outs, stopped) if not done)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val = accuracies(model, data["f_val"], data["y_val"])
        for i, acc in enumerate(val):
            if stopped[i]:
                continue
            if acc > best[i]["val"]:
                best[i] = {"val": acc, "epoch": epoch, "state": head_state(model, i, heads)}
            elif epoch - best[i]["epoch"] >= args.patience:
                stopped[i] = True
        print(f"seed {seed} epoch {epoch}: {sum(stopped)}/{len(heads)} heads stopped, "
              f"{time.time() - t0:.0f} s", flush=True)
        if all(stopped):
            break
    rows = []
    for i, (method, h) in enumerate(heads):
        load_head_state(model, i, heads, best[i]["state"])
    test = accuracies(model, data["f_test"], data["y_test"])
    for i, (method, h) in enumerate(heads):
        rows.append({"stage": "frozen", "seed": seed, "method": method, "hidden": h,
                     "params": count_parameters(students[hiddens.index(h)]), "val_accuracy": best[i]["val"],
                     "best_epoch": best[i]["epoch"], "converged": stopped[i], "test_accuracy": test[i],
                     "seconds_all_heads": time.time() - t0})
    return rows


@torch.no_grad()
def accuracies(model: ParallelHeads, feats: torch.Tensor, labels: torch.Tensor) -> list[float]:
    model.eval()
    correct = torch.zeros(len(model.hiddens))
    for start in range(0, len(labels), 1000):
        outs = model(feats[start: start + 1000])
        correct += torch.tensor([(o.argmax(1) == labels[start: start + 1000]).sum().item() for o in outs])
    return (correct / len(labels)).tolist()


def head_state(model: ParallelHeads, i: int, heads: list) -> dict:
    lo = sum(h for _, h in heads[:i])
    hi = lo + heads[i][1]
    return {"w": model.hidden.weight[lo:hi].detach().clone(), "b": model.hidden.bias[lo:hi].detach().clone(),
            "out": {k: v.detach().clone() for k, v in model.out[i].state_dict().items()}}


@torch.no_grad()
def load_head_state(model: ParallelHeads, i: int, heads: list, state: dict | None) -> None:
    if state is None:
        return
    lo = sum(h for _, h in heads[:i])
    model.hidden.weight[lo: lo + heads[i][1]] = state["w"]
    model.hidden.bias[lo: lo + heads[i][1]] = state["b"]
    model.out[i].load_state_dict(state["out"])


def stage_frozen(args, fit_set, val_set, test_set, teacher) -> None:
    out = Path(args.out)
    results = read_results(out, "frozen")
    hiddens = [int(h) for h in args.hidden.split(",")]
    grid_sizes = hiddens if args.grid_hidden == "all" else [int(h) for h in args.grid_hidden.split(",")]
    heads = [(m, h) for m in ("mse", "kd-T4", "labels") for h in hiddens]
    heads += [(f"kd-T{t}", h) for t in args.grid.split(",") if t and t != "4" for h in grid_sizes]
    t0 = time.time()
    data = {"f_fit": conv_features(teacher, fit_set), "f_val": conv_features(teacher, val_set),
            "f_test": conv_features(teacher, test_set), "t_fit": logits_of(teacher, fit_set),
            "y_fit": fit_set.labels, "y_val": val_set.labels, "y_test": test_set.labels}
    print(f"teacher features and logits: {time.time() - t0:.0f} s")
    for seed in (int(s) for s in args.seeds.split(",")):
        if any(r["seed"] == seed for r in results):
            print(f"seed {seed}: done before, skipped")
            continue
        results += run_frozen_seed(seed, heads, hiddens, data, args)
        write_results(out, "frozen", results)


def stage_e2e(args, fit_set, val_set, test_set, teacher) -> None:
    """Whole students at one size: logit MSE against labels only, same start, same batches."""
    out = Path(args.out)
    results = read_results(out, "e2e")
    h, seed = args.e2e_hidden, args.e2e_seed
    torch.manual_seed(1000 * seed + h)
    start = create_model("kd-student", in_chans=1, num_classes=test_set.num_classes, hidden=h)
    cfg = seed_config(args.e2e_max_epochs, args, seed=seed, patience=args.e2e_patience)
    for method in ("mse", "labels"):
        if any(r["method"] == method and r["hidden"] == h and r["seed"] == seed for r in results):
            print(f"e2e {method} h={h} seed {seed}: done before, skipped")
            continue
        student = create_model("kd-student", in_chans=1, num_classes=test_set.num_classes, hidden=h)
        student.load_state_dict(start.state_dict())
        t0 = time.time()
        if method == "mse":
            history = distill(student, teacher, fit_set, cfg, teacher_mode="gray", student_mode="gray", loss="mse",
                              teacher_normalize=NORMALIZE, student_normalize=NORMALIZE, evaluate_teacher=False,
                              val_set=val_set)
        else:
            history = train(student, fit_set, cfg, val_set=val_set)
        acc = evaluate(student, test_set, mode="gray", normalize=NORMALIZE, progress=False)["accuracy"]
        results.append({"stage": "e2e", "seed": seed, "method": method, "hidden": h,
                        "params": count_parameters(student), "val_accuracy": history["best_val_accuracy"],
                        "best_epoch": history["best_epoch"], "epochs_run": len(history["epochs"]),
                        "converged": len(history["epochs"]) < cfg.epochs, "test_accuracy": acc,
                        "seconds": time.time() - t0})
        print(f"e2e {method}: test {acc:.4f}, best epoch {history['best_epoch']} of {len(history['epochs'])}, "
              f"{time.time() - t0:.0f} s", flush=True)
        write_results(out, "e2e", results)


def read_results(out: Path, stage: str) -> list[dict]:
    path = out / f"{stage}.json"
    return json.loads(path.read_text()) if path.is_file() else []


def write_results(out: Path, stage: str, rows: list[dict]) -> None:
    atomic_write_json(out / f"{stage}.json", rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    if args.stage == "report":
        from kd_seed_report import report  # noqa: PLC0415  (the report lives beside this script)

        report(Path(args.out), args)
        return
    fit_set, val_set, test_set = load_data(args)
    print(f"{test_set.extra.get('display_name', args.dataset)}: {len(fit_set)} train / {len(val_set)} validation / "
          f"{len(test_set)} test images, {args.threads} thread(s)")
    teacher = get_teacher(args, fit_set, test_set)
    t_acc = evaluate(teacher, test_set, mode="gray", normalize=NORMALIZE, progress=False)["accuracy"]
    logits = logits_of(teacher, test_set)  # the scale logit MSE regresses
    atomic_write_json(Path(args.out) / "teacher.json", {"params": count_parameters(teacher), "test_accuracy": t_acc,
                                                        "epochs": args.teacher_epochs,
                                                        "test_logit_mean_abs": logits.abs().mean().item(),
                                                        "test_logit_max_abs": logits.abs().max().item()})
    print(f"teacher: {count_parameters(teacher):,} parameters, test accuracy {t_acc:.4f}")
    if args.stage == "frozen":
        stage_frozen(args, fit_set, val_set, test_set, teacher)
    elif args.stage == "e2e":
        stage_e2e(args, fit_set, val_set, test_set, teacher)
    print(f"stage {args.stage}: {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
