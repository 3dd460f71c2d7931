"""Knowledge distillation: a student (e.g. gray, smaller) learns a teacher's (e.g. color) logits.

`distill(student, teacher, train_set, TrainConfig(...), teacher_mode="color", student_mode="gray")`.
"""
from .losses import LOSSES, distillation_loss, hinton_kd, logit_mse
from .loop import distill
from .pairs import PairedBatchLoader, two_views

__all__ = ["LOSSES", "distillation_loss", "hinton_kd", "logit_mse", "distill", "PairedBatchLoader", "two_views"]
