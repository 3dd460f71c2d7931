"""Accuracy and loss of a model on a data set in a given color mode."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from ..progress import progress as progress_bar

from ..data import BatchLoader, ImageDataset, Normalization


def default_eval_batch(device: str | torch.device) -> int:
    """Evaluation batch size: 64 on a CPU, where activations of a few hundred images fall out of the
    caches (the demo model on 1 thread evaluated 2,000 images in 7.2 s at 500, 2.0 s at 64), 500 elsewhere."""
    return 64 if torch.device(device).type == "cpu" else 500


def count_parameters(model: nn.Module) -> int:
    """Trainable and frozen parameters (not BN running statistics)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: ImageDataset,
    mode: str = "color",
    normalize: str | Normalization | dict | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict:
    """Top-1 accuracy, balanced accuracy (mean per-class recall), mean cross-entropy, sample count and
    parameter count, as a plain dict.

    batch_size: default `default_eval_batch(device)`."""
    model = model.to(device).eval()
    loader = BatchLoader(dataset, batch_size=batch_size or default_eval_batch(device), mode=mode, normalize=normalize, device=device)
    _check_channels(model, loader)
    classes = max(int(dataset.labels.max()) + 1, len(getattr(dataset, "classes", None) or []))
    hits, seen = torch.zeros(classes, dtype=torch.long), torch.zeros(classes, dtype=torch.long)
    loss_sum, n = 0.0, 0
    for x, y in progress_bar(loader, desc="evaluate", enabled=progress):
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        y = y.cpu()
        seen += torch.bincount(y, minlength=classes)
        hits += torch.bincount(y[logits.argmax(1).cpu() == y], minlength=classes)
        n += len(y)
    present = seen > 0  # balanced accuracy: the mean recall over the classes the set holds (scikit-learn's)
    balanced = (hits[present].double() / seen[present].double()).mean().item()
    return {"accuracy": hits.sum().item() / n, "balanced_accuracy": balanced, "loss": loss_sum / n, "n": n,
            "params": count_parameters(model)}


def first_conv_in_channels(model: nn.Module, size: int = 32) -> int | None:
    """Input channels of the first Conv2d the forward pass calls (None when the model has none)."""
    from ..models.inspect import input_channels

    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return None
    return input_channels(model, size)


def _check_channels(model: nn.Module, loader: BatchLoader) -> None:
    expected = first_conv_in_channels(model, int(loader.dataset.images.shape[-1]))
    got = 1 if loader.mode == "gray" else 3
    if expected is not None and expected != got:
        hint = "use --mode gray" if expected == 1 else "use --mode color or gray3"
        raise ValueError(f"the model takes {expected}-channel input but mode {loader.mode!r} gives {got}: {hint}")
