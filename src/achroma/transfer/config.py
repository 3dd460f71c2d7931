"""How `transfer` runs: where the gray model starts from and how it is fine-tuned (one dataclass)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..data import InputGeometry
from ..training import SELECT_BY

STARTS = ("scratch", "gray3", "fold")


@dataclass
class TransferConfig:
    """start: 'scratch' (the color model's architecture, 1 input channel, fresh weights), 'gray3' (the
    color model fed gray images copied to 3 channels), 'fold' (the folded 1-channel model).
    target: with 'fold', merge to this share of the folded model's `by` ('macs' or 'params') first,
    by `selection` and `cluster` (compress's defaults for budgets). geometry: how the target's
    images are brought to the model's size. Then a new head of the target's classes and fine-tuning:
    SGD (or AdamW) with a cosine schedule, random crops with zero padding, no flip unless `flip`
    (X-rays and documents have a left and a right), early stopping on the validation split when
    `patience` is set and one exists; the validation score `select_by` ('accuracy' or
    'balanced_accuracy', for imbalanced splits) picks the epoch kept. class_weights: 'none' or
    'balanced' cross-entropy weights."""

    start: str = "fold"
    target: float | None = None
    by: str = "macs"
    selection: str = "weights"
    cluster: str = "kmeans"
    geometry: InputGeometry = field(default_factory=InputGeometry)
    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 5e-4
    augment: bool = True
    flip: bool = False
    patience: int | None = None
    select_by: str = "accuracy"
    class_weights: str = "none"
    seed: int = 0
    device: str = "cpu"
    latency_runs: int = 20

    def __post_init__(self) -> None:
        if self.start not in STARTS:
            raise ValueError(f"unknown start {self.start!r}; choose {', '.join(STARTS)}")
        if self.target is not None:
            if self.start != "fold":
                raise ValueError("a merge target needs start 'fold' (the merge works on the folded gray model)")
            if not 0 < self.target < 1:
                raise ValueError(f"target must lie in (0, 1), got {self.target}")
        if self.by not in ("macs", "params"):
            raise ValueError(f"by must be 'macs' or 'params', got {self.by!r}")
        if self.class_weights not in ("none", "balanced"):
            raise ValueError(f"class_weights must be 'none' or 'balanced', got {self.class_weights!r}")
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")

    @property
    def label(self) -> str:
        """The row's name in tables: scratch, gray3, fold, fold+merge:macs=0.5."""
        return f"fold+merge:{self.by}={self.target:g}" if self.target is not None else self.start

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "geometry": self.geometry.to_dict()}
