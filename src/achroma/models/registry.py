"""A registry of model constructors by name, in the style of timm: `create_model(name, ...)`."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a constructor `fn(in_chans=, num_classes=, **kw)` available as `name`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """Names accepted by `create_model` (plus any `tv:<torchvision name>`)."""
    return sorted(_REGISTRY)


def create_model(name: str, in_chans: int = 3, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a model by registry name; `tv:<name>` builds a torchvision classifier (random init)."""
    if name.startswith("tv:"):
        from .torchvision_models import create_torchvision_model

        model = create_torchvision_model(name[3:], in_chans=in_chans, num_classes=num_classes, **kwargs)
    elif name in _REGISTRY:
        model = _REGISTRY[name](in_chans=in_chans, num_classes=num_classes, **kwargs)
    else:
        known = ", ".join(list_models())
        raise ValueError(f"unknown model {name!r}; known: {known}, or tv:<torchvision model name>")
    # Recorded so that checkpoints can say how to rebuild the model.
    model.achroma_arch = {"name": name, "in_chans": in_chans, "num_classes": num_classes, **kwargs}
    return model
