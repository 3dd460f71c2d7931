"""Distillation losses on logits: the seed's logit regression (MSE) and Hinton's softened KL."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between logits (mean over batch and classes, like Keras' 'mse'): the seed's
    regression of the teacher's pre-softmax outputs, which avoids the tiny values softmax squashes to."""
    return F.mse_loss(student_logits.float(), teacher_logits.float())


def hinton_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
              T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels).

    `alpha` weighs the soft (teacher) term and the hard-label weight is `1 - alpha`; T^2 keeps the
    soft term's gradients on the same scale as T changes (Hinton et al. 2015). alpha=0 (hard-label
    weight 1) is exactly cross-entropy on the labels, at any T; alpha=1 needs no labels. The KL is
    averaged over the batch, as the cross-entropy is.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if T <= 0:
        raise ValueError(f"temperature T must be positive, got {T}")
    s, t = student_logits.float(), teacher_logits.float()
    loss = s.new_zeros(())
    if alpha > 0:
        kl = F.kl_div(F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1), reduction="batchmean",
                      log_target=True)
        loss = loss + alpha * T * T * kl
    if alpha < 1:
        if labels is None:
            raise ValueError("hinton_kd needs labels when alpha < 1 (hard-label weight 1 - alpha > 0)")
        loss = loss + (1 - alpha) * F.cross_entropy(s, labels)
    return loss


def distillation_loss(name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor | None, T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Dispatch by name: 'mse' (logit_mse; T and alpha unused) or 'kd' (hinton_kd)."""
    if name == "mse":
        return logit_mse(student_logits, teacher_logits)
    if name == "kd":
        return hinton_kd(student_logits, teacher_logits, labels, T=T, alpha=alpha)
    raise ValueError(f"unknown distillation loss {name!r}; choose mse or kd")


LOSSES = ("mse", "kd")
