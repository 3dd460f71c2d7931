"""The metrics medical and document imaging report: accuracy, balanced accuracy, ROC AUC (binary, or
one-vs-rest macro for several classes, as MedMNIST reports it), the confusion matrix and its figure.
Computed by scikit-learn from the model's softmax probabilities."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..data import BatchLoader, ImageDataset, Normalization


@torch.no_grad()
def predict_proba(model: nn.Module, dataset: ImageDataset, mode: str, normalize: str | Normalization | dict | None,
                  batch_size: int = 64, device: str | torch.device = "cpu") -> torch.Tensor:
    """Softmax probabilities (N, classes) of `model` on every image of `dataset`, in order."""
    model = model.to(device).eval()
    loader = BatchLoader(dataset, batch_size, mode=mode, normalize=normalize, device=device)
    return torch.cat([model(x).float().softmax(1).cpu() for x, _ in loader])


def classification_metrics(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                           classes: list[str] | None = None) -> dict[str, Any]:
    """accuracy, balanced_accuracy, auc (binary: of the positive class 1; else one-vs-rest macro), the
    confusion matrix (rows true, columns predicted) and per-class support, as plain numbers."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    k = p.shape[1]
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels run to {int(y.max())} but the model gives {k} class scores: "
                         "a model for another task (give it a new head, e.g. with `achroma transfer`)")
    pred = p.argmax(1)
    present = np.unique(y)
    if len(present) < 2:
        auc = None  # undefined with one class in the labels
    elif k == 2:
        auc = float(roc_auc_score(y, p[:, 1]))
    else:
        auc = float(roc_auc_score(y, p / p.sum(1, keepdims=True), multi_class="ovr", average="macro",
                                  labels=list(range(k))))
    return {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "auc": auc, "auc_kind": "binary" if k == 2 else "one-vs-rest macro",
            "confusion": confusion_matrix(y, pred, labels=list(range(k))).tolist(),
            "support": np.bincount(y, minlength=k).tolist(), "n": int(len(y)),
            "classes": list(classes) if classes else [str(i) for i in range(k)]}


def plot_confusion(metrics: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """The confusion matrix as a PNG: counts, and each row's share of its class as the colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write_bytes

    cm = np.asarray(metrics["confusion"], dtype=float)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    classes = metrics["classes"]
    side = max(3.5, 0.55 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side, side * 0.9), dpi=100)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    auc = f", AUC {metrics['auc']:.3f}" if metrics.get("auc") is not None else ""
    ax.set_title(f"{title}\naccuracy {metrics['accuracy']:.3f}{auc}".strip(), fontsize=9)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
