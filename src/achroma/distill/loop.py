"""The distillation loop: the student regresses (or KL-matches) a frozen teacher's logits on paired
views of the same images; SGD, schedule, evaluation and checkpoints as in `achroma.training`."""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from ..progress import progress as progress_bar

from ..data import ImageDataset, Normalization, get_normalization, mode_channels
from ..io import save_checkpoint
from ..training import (EarlyStopping, TrainConfig, best_summary, evaluate, first_conv_in_channels, lr_at,
                        make_optimizer, train_step, validation_record)
from ..training.distributed import setup_distributed, unwrap, wrap_model
from .features import FeatureMatch
from .losses import LOSSES, distillation_loss
from .pairs import PairedBatchLoader


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_set: ImageDataset,
    config: TrainConfig,
    teacher_mode: str = "color",
    student_mode: str = "gray",
    teacher_normalize: str | Normalization | dict | None = None,
    student_normalize: str | Normalization | dict | None = None,
    loss: str = "mse",
    T: float = 4.0,
    alpha: float = 0.9,
    test_set: ImageDataset | None = None,
    out_dir: str | Path | None = None,
    evaluate_teacher: bool = True,
    progress: bool = True,
    val_set: ImageDataset | None = None,
    features: FeatureMatch | None = None,
    step_hook: Callable[[float], None] | None = None,
) -> dict:
    """Train `student` in place to match `teacher` (eval mode, no gradients) and return the history.

    `config` supplies epochs, batch size, SGD settings, schedule, augmentation, seed and device
    (its `mode`/`normalize` are not used: the two views have their own). Normalizations default
    to `config.normalize` for the teacher and to the teacher's for the student (a 3-value preset
    reduces to gray by luma weights). `loss`: 'mse' (the seed's logit regression) or 'kd'
    (`hinton_kd` with `T` and soft weight `alpha`). With `out_dir`, the student is saved as
    `out_dir/model.safetensors` + `.json` (mode, normalization, distillation settings, history).
    With `features` (a `FeatureMatch`) the merged student's BN outputs are also trained toward the
    uncompressed gray model's on the same images (`distill/features.py`). `step_hook(fraction)` is called
    before every step with the fraction of the training done (the centripetal repair's tie).
    With `val_set` the student is scored on it (labels) every epoch; with `config.patience` too, the
    run stops after that many epochs without a better validation accuracy and keeps the best epoch.
    Under torchrun (WORLD_SIZE > 1) the student trains data-parallel as in `achroma.training.train`:
    DDP, each process its share of every epoch, `config.batch_size` per process; only rank 0 prints
    and saves.
    """
    if config.patience is not None and val_set is None:
        raise ValueError("early stopping (patience) needs a validation set")
    if loss not in LOSSES:
        raise ValueError(f"unknown distillation loss {loss!r}; choose {' or '.join(LOSSES)}")
    t_norm = get_normalization(config.normalize if teacher_normalize is None else teacher_normalize)
    s_norm = get_normalization(t_norm if student_normalize is None else student_normalize)
    _check_input(teacher, teacher_mode, "teacher")
    _check_input(student, student_mode, "student")
    device = config.resolved_device()
    info = setup_distributed(device)
    if device.type == "cuda" and info.world_size > 1:
        device = torch.device("cuda", info.local_rank)
    progress = progress and info.is_main
    torch.manual_seed(config.seed)
    amp = config.amp and device.type == "cuda"
    teacher = teacher.to(device).eval()
    student = student.to(device)
    optimizer = make_optimizer(student, config)
    loader = PairedBatchLoader(train_set, config.batch_size, teacher_mode=teacher_mode, student_mode=student_mode,
                               teacher_normalize=t_norm, student_normalize=s_norm, shuffle=True,
                               augment=config.augment, drop_last=True, device=device, seed=config.seed,
                               flip=config.flip, rank=info.rank, world_size=info.world_size)
    net = wrap_model(student, info, device)
    settings = {"loss": loss, "T": T, "alpha": alpha, "teacher_mode": teacher_mode,
                "teacher_normalization": t_norm.to_dict(), "teacher_arch": getattr(teacher, "achroma_arch", None)}
    history: dict = {"epochs": [], "config": config.to_dict(), "distillation": settings}
    if test_set is not None and evaluate_teacher:
        history["teacher_test_accuracy"] = evaluate(teacher, test_set, mode=teacher_mode, normalize=t_norm,
                                                    device=device, progress=False)["accuracy"]
    if features is not None:
        features.reference.to(device)
        settings["features"] = {"layers": len(features.layers), "weight": features.weight}
    steps = len(loader)
    stopper = EarlyStopping(config.patience)
    for epoch in range(config.epochs):
        loader.set_epoch(epoch)
        net.train()
        t0, total = time.time(), 0.0
        bar = progress_bar(loader, desc=f"distill {epoch + 1}/{config.epochs}", enabled=progress)
        with features.attached(student) if features is not None else nullcontext() as match:
            for i, (xt, xs, y) in enumerate(bar):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(config, epoch + i / steps)
                if step_hook is not None:
                    step_hook((epoch + i / steps) / config.epochs)
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    target = teacher(xt).float()
                    if match is not None:
                        match.targets(xs)
                value = train_step(net, xs, y, optimizer, _loss_fn(loss, target, T, alpha, match), amp)
                total += value
                bar.set_postfix(loss=f"{value:.4f}")
        record = {"epoch": epoch + 1, "train_loss": total / max(steps, 1), "lr": optimizer.param_groups[0]["lr"],
                  "seconds": time.time() - t0}
        stop = False
        if val_set is not None:
            val = evaluate(student, val_set, mode=student_mode, normalize=s_norm, device=device, progress=False)
            record.update(validation_record(val))
            stop = stopper.step(val[config.select_by], epoch + 1, student)
        if test_set is not None and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs or stop):
            result = evaluate(student, test_set, mode=student_mode, normalize=s_norm, device=device, progress=False)
            record.update(test_accuracy=result["accuracy"], test_loss=result["loss"])
        history["epochs"].append(record)
        if progress:
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if stop:
            break
    if val_set is not None and stopper.best_state is not None:
        stopper.restore(student)
        history.update(best_summary(stopper, history["epochs"], config.select_by))
    if out_dir is not None and info.is_main:
        meta = {"normalization": s_norm.to_dict(), "mode": student_mode,
                "dataset": {"name": train_set.name,
                            "display_name": train_set.extra.get("display_name", train_set.name),
                            "classes": train_set.classes},
                "distillation": settings, "training": history}
        save_checkpoint(Path(out_dir) / "model", student, meta)
    return history


def _loss_fn(name: str, target: torch.Tensor, T: float, alpha: float, match=None):
    """A `train_step` loss closure over this batch's teacher logits, plus the feature term (`match`, a
    `FeatureMatch` session holding this batch's targets) and the student's own penalty."""

    def fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = distillation_loss(name, model(x), target, y, T=T, alpha=alpha)
        term = match.loss() if match is not None else None
        value = value if term is None else value + term
        reg = getattr(unwrap(model), "regularization_loss", None)  # the student's own, through DDP's wrapper
        return value + reg().to(value.device) if reg is not None else value

    return fn


def _check_input(model: nn.Module, mode: str, role: str) -> None:
    expected, got = first_conv_in_channels(model), mode_channels(mode)
    if expected is not None and expected != got:
        raise ValueError(f"the {role} takes {expected}-channel input but mode {mode!r} gives {got} channels")
