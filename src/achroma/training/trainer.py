"""Supervised training: SGD with momentum (or AdamW, or the Keras-era Adadelta), cosine, step or
constant schedule, CIFAR augmentation, early stopping on a validation split, AMP and channels_last on
CUDA, DDP under torchrun, a checkpoint every epoch and resume from the last."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from ..progress import progress

from ..data import BatchLoader, ImageDataset, get_normalization
from ..io import atomic_write_bytes, save_checkpoint
from .distributed import setup_distributed, unwrap, wrap_model
from .early_stopping import SELECT_BY, EarlyStopping, best_summary, validation_record
from .evaluate import evaluate

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


ONECYCLE_RISE = 0.25  # the share of a one-cycle run spent warming up


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved beside every checkpoint)."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant | onecycle (a quarter warming up, then cosine to 0)
    milestones: tuple[float, ...] = (0.5, 0.75)  # step schedule: fractions of the epochs
    warmup_epochs: float = 0.0
    mode: str = "color"
    normalize: str | dict = "cifar"
    augment: bool = True
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    seed: int = 0
    device: str = "auto"
    eval_every: int = 1
    optimizer: str = "sgd"  # sgd (momentum, Nesterov) | adamw | adadelta (Keras' classic: rho 0.95, eps 1e-7)
    patience: int | None = None  # early stopping: epochs without a better validation accuracy (needs val_set)
    flip: bool = True  # the augmentation's horizontal flip (off for X-rays and documents)
    select_by: str = "accuracy"  # the validation score that picks the best epoch: accuracy | balanced_accuracy

    def __post_init__(self) -> None:
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")

    def to_dict(self) -> dict:
        """JSON-ready (tuples become lists), as saved beside checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def classification_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus the model's own regularization terms (e.g. the seed DenseNet's L1)."""
    loss = F.cross_entropy(model(x).float(), y)
    reg = getattr(unwrap(model), "regularization_loss", None)
    return loss + reg().to(loss.device) if reg is not None else loss


def weighted_classification_loss(weights: torch.Tensor) -> LossFn:
    """`classification_loss` with per-class weights on the cross-entropy (e.g. for imbalanced classes)."""

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(x).float(), y, weight=weights.to(x.device, torch.float32))
        reg = getattr(unwrap(model), "regularization_loss", None)
        return loss + reg().to(loss.device) if reg is not None else loss

    return loss_fn


def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (classes * n_c) per class (scikit-learn's 'balanced'): each class weighs the same in total."""
    counts = torch.bincount(labels.long(), minlength=num_classes).float()
    if (counts == 0).any():
        missing = [i for i, c in enumerate(counts.tolist()) if c == 0]
        raise ValueError(f"class(es) {missing} have no training image: cannot weight them")
    return counts.sum() / (num_classes * counts)


def lr_at(config: TrainConfig, progress: float) -> float:
    """Learning rate at `progress` epochs into the run (fractional)."""
    if config.warmup_epochs and progress < config.warmup_epochs:
        return config.lr * progress / config.warmup_epochs
    if config.schedule == "cosine":
        return 0.5 * config.lr * (1 + math.cos(math.pi * min(progress / config.epochs, 1.0)))
    if config.schedule == "step":
        drops = sum(progress >= m * config.epochs for m in config.milestones)
        return config.lr * 0.1 ** drops
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "onecycle":  # Smith's one cycle: up linearly from lr/25 for a quarter, then cosine down
        rise = ONECYCLE_RISE * config.epochs
        if progress < rise:
            return config.lr * (0.04 + 0.96 * progress / rise)
        return 0.5 * config.lr * (1 + math.cos(math.pi * min((progress - rise) / (config.epochs - rise), 1.0)))
    raise ValueError(f"unknown schedule {config.schedule!r}; choose cosine, step, constant or onecycle")


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
               loss_fn: LossFn = classification_loss, amp: bool = False) -> float:
    """One optimizer step on a batch; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = loss_fn(model, x, y)
    loss.backward()
    optimizer.step()
    return loss.item()


OPTIMIZERS = ("sgd", "adamw", "adadelta")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `config.optimizer` names, over every parameter of `model`."""
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adadelta":  # Keras 2's defaults for the classic examples: lr 1.0, rho 0.95, eps 1e-7
        return torch.optim.Adadelta(params, lr=config.lr, rho=0.95, eps=1e-7, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose {', '.join(OPTIMIZERS)}")


def train(
    model: nn.Module,
    train_set: ImageDataset,
    config: TrainConfig,
    test_set: ImageDataset | None = None,
    out_dir: str | Path | None = None,
    loss_fn: LossFn = classification_loss,
    resume: bool = True,
    val_set: ImageDataset | None = None,
) -> dict:
    """Train `model` in place; with `out_dir`, checkpoint every epoch (`last.*`) and resume from it.

    With `val_set`, every epoch is scored on it; with `config.patience` too, training stops after
    that many epochs without a better validation accuracy and the best epoch's weights are kept
    (the test set never chooses). Returns the history: per-epoch train loss, validation and test
    accuracy, learning rate and seconds; `best_epoch` when a validation set was given.
    """
    if config.patience is not None and val_set is None:
        raise ValueError("early stopping (patience) needs a validation set")
    device = config.resolved_device()
    info = setup_distributed(device)
    if device.type == "cuda" and info.world_size > 1:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(config.seed)
    cuda = device.type == "cuda"
    model = model.to(device)
    if cuda and config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    out = Path(out_dir) if out_dir else None
    history: dict = {"epochs": [], "config": config.to_dict()}
    start_epoch = 0
    if out is not None and resume and (out / "last.state.pt").is_file():
        state = torch.load(out / "last.state.pt", map_location=device, weights_only=True)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        history["epochs"] = _decode_history(state["history"])
        if info.is_main:
            print(f"resuming from {out / 'last.state.pt'} at epoch {start_epoch}")
    net = wrap_model(model, info, device)
    loader = BatchLoader(train_set, config.batch_size, mode=config.mode, normalize=config.normalize,
                         shuffle=True, augment=config.augment, drop_last=True, device=device,
                         seed=config.seed, rank=info.rank, world_size=info.world_size, flip=config.flip)
    steps = len(loader)
    if steps == 0:
        raise ValueError(f"{len(train_set)} training images make no full batch of {config.batch_size}: "
                         "lower the batch size")
    amp = config.amp and cuda
    stopper = EarlyStopping(config.patience)
    for epoch in range(start_epoch, config.epochs):
        loader.set_epoch(epoch)
        net.train()
        t0, total = time.time(), 0.0
        bar = progress(loader, desc=f"epoch {epoch + 1}/{config.epochs}", enabled=info.is_main)
        for i, (x, y) in enumerate(bar):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(config, epoch + i / steps)
            if cuda and config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = train_step(net, x, y, optimizer, loss_fn, amp)
            total += loss
            bar.set_postfix(loss=f"{loss:.3f}")
        record = {"epoch": epoch + 1, "train_loss": total / steps, "lr": optimizer.param_groups[0]["lr"],
                  "seconds": time.time() - t0}
        stop = False
        if val_set is not None:
            val = evaluate(unwrap(net), val_set, mode=config.mode, normalize=config.normalize, device=device,
                           progress=False)
            record.update(validation_record(val))
            stop = stopper.step(val[config.select_by], epoch + 1, unwrap(net))
        last = epoch + 1 == config.epochs or stop
        if test_set is not None and info.is_main and ((epoch + 1) % config.eval_every == 0 or last):
            result = evaluate(unwrap(net), test_set, mode=config.mode, normalize=config.normalize, device=device,
                              progress=False)
            record.update(test_accuracy=result["accuracy"], test_loss=result["loss"])
        history["epochs"].append(record)
        if info.is_main:
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if out is not None:
                _save_state(out, unwrap(net), optimizer, epoch + 1, history, config, train_set)
        if stop:
            if info.is_main:
                print(f"early stop: no better validation accuracy for {config.patience} epochs")
            break
    if val_set is not None and stopper.best_state is not None:
        stopper.restore(unwrap(net))
        history.update(best_summary(stopper, history["epochs"], config.select_by))
        if test_set is not None and info.is_main:
            last_record = history["epochs"][-1]
            if stopper.best_epoch == last_record["epoch"] and "test_accuracy" in last_record:
                history["best_test_accuracy"] = last_record["test_accuracy"]
            else:
                history["best_test_accuracy"] = evaluate(unwrap(net), test_set, mode=config.mode,
                                                         normalize=config.normalize, device=device,
                                                         progress=False)["accuracy"]
    if info.is_main and out is not None:
        save_checkpoint(out / "model", unwrap(net), _meta(history, config, train_set))
    return history


def _meta(history: dict, config: TrainConfig, train_set: ImageDataset) -> dict:
    return {
        "normalization": get_normalization(config.normalize).to_dict(),
        "mode": config.mode,
        "dataset": {"name": train_set.name, "display_name": train_set.extra.get("display_name", train_set.name),
                    "classes": train_set.classes},
        "training": history,
    }


def _save_state(out: Path, model: nn.Module, optimizer, epoch: int, history: dict, config: TrainConfig,
                train_set: ImageDataset) -> None:
    """The resumable state (our own file, read back with weights_only) and a usable checkpoint."""
    import io

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "history": _encode_history(history["epochs"])}, buf)
    atomic_write_bytes(out / "last.state.pt", buf.getvalue())
    save_checkpoint(out / "last", model, _meta(history, config, train_set))


def _encode_history(epochs: list[dict]) -> dict[str, torch.Tensor]:
    """History as tensors so the state file loads with weights_only=True."""
    keys = sorted({k for e in epochs for k in e})
    return {k: torch.tensor([float(e.get(k, float("nan"))) for e in epochs], dtype=torch.float64) for k in keys}


def _decode_history(encoded: dict[str, torch.Tensor]) -> list[dict]:
    n = len(next(iter(encoded.values()))) if encoded else 0
    rows = [{k: v[i].item() for k, v in encoded.items() if not math.isnan(v[i].item())} for i in range(n)]
    for row in rows:
        row["epoch"] = int(row["epoch"])
    return rows
