"""Early stopping on a validation score: keep the best weights, stop after `patience` epochs without gain."""
from __future__ import annotations

import copy

import torch.nn as nn


class EarlyStopping:
    """Track a score that should rise (validation accuracy); `step` says when to stop.

    The best weights are copied at each new best, so `restore` hands back the model of the best
    epoch, not the last one (Keras' `restore_best_weights=True`). `patience=None` never stops.
    """

    def __init__(self, patience: int | None, min_delta: float = 0.0):
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be at least 1 epoch, got {patience}")
        self.patience, self.min_delta = patience, min_delta
        self.best_score: float | None = None
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.bad_epochs = 0

    def step(self, score: float, epoch: int, model: nn.Module) -> bool:
        """Record epoch `epoch`'s score; True when training should stop now."""
        if self.best_score is None or score > self.best_score + self.min_delta:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into `model` (nothing to do before the first step)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


SELECT_BY = ("accuracy", "balanced_accuracy")


def validation_record(val: dict) -> dict:
    """The validation columns of an epoch's record, from `evaluate`'s dict."""
    return {"val_accuracy": val["accuracy"], "val_balanced_accuracy": val["balanced_accuracy"],
            "val_loss": val["loss"]}


def best_summary(stopper: EarlyStopping, epochs: list[dict], select_by: str) -> dict:
    """What the history says of the kept epoch: its number, the score that chose it, its validation accuracy.

    On an imbalanced validation split (PneumoniaMNIST's is 74% one class) accuracy can prefer an
    epoch that predicts the majority class everywhere; balanced accuracy does not."""
    best = next(e for e in epochs if e["epoch"] == stopper.best_epoch)
    return {"best_epoch": stopper.best_epoch, "select_by": select_by, "best_val_score": stopper.best_score,
            "best_val_accuracy": best["val_accuracy"]}
