"""The teacher and students of the Keras knowledge-distillation seed (logit regression on MNIST).

Both share the feature extractor: 3x3 conv 32 (ReLU), 3x3 conv 64 (ReLU), both unpadded; 2x2 max
pool; dropout. The teacher's head is dense 128 (ReLU), dropout, dense to the classes: 1,199,882
parameters at 28x28 with 1 channel and 10 classes, as in the seed's Keras summary. A student
replaces the 128 units by `hidden` units (the seed's "1 hidden layer"): 18,826 + 9,227 * hidden
parameters at 28x28 / 1 channel / 10 classes, so hidden=6 gives the seed's 74,188 (16.2x smaller).
The seed does not state the teacher's dropout rates; 0.25 and 0.5 are those of Keras' mnist_cnn
example, whose layers the summary matches. The student's second dropout is the seed's 0.2.
The pool is adaptive to the grid an `img_size` input gives ((img_size - 4) / 2, 12x12 at 28): at
that size it is exactly the 2x2 max pool, and other input sizes (32x32 CIFAR) still fit the dense layer.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .registry import list_models, register_model


class KDConvNet(nn.Module):
    """conv32 -> conv64 -> maxpool -> dropout -> dense(hidden) -> dropout -> dense(classes); logits out."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10, hidden: int = 128, img_size: int = 28,
                 drop_features: float = 0.25, drop_hidden: float = 0.5):
        super().__init__()
        if img_size < 6:
            raise ValueError(f"img_size must be at least 6 (two unpadded 3x3 convs and a 2x2 pool), got {img_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 32, 3), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool2d((img_size - 4) // 2), nn.Dropout(drop_features), nn.Flatten(),
        )
        side = (img_size - 4) // 2
        self.hidden = nn.Linear(64 * side * side, hidden)
        self.drop = nn.Dropout(drop_hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(torch.relu(self.hidden(self.features(x)))))


def _register(name: str, fn: Callable[..., nn.Module]) -> None:
    """Register once: importing this module again (reload, two import paths) must not fail."""
    if name not in list_models():
        register_model(name)(fn)


def kd_teacher(in_chans: int = 1, num_classes: int = 10, **kwargs) -> KDConvNet:
    """The seed's teacher: dense 128 head, dropout 0.25 / 0.5 (1,199,882 parameters on MNIST)."""
    return KDConvNet(in_chans=in_chans, num_classes=num_classes, **{"hidden": 128, "drop_hidden": 0.5, **kwargs})


def kd_student(in_chans: int = 1, num_classes: int = 10, hidden: int = 6, **kwargs) -> KDConvNet:
    """The seed's student: the teacher with `hidden` dense units and dropout 0.2 (hidden=6: 74,188)."""
    return KDConvNet(in_chans=in_chans, num_classes=num_classes, hidden=hidden, **{"drop_hidden": 0.2, **kwargs})


_register("kd-teacher", kd_teacher)
_register("kd-student", kd_student)
