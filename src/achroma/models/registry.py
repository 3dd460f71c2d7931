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
    """Names accepted by `create_model` (plus any `tv:<torchvision name>` and `timm:<timm name>`)."""
    return sorted(_REGISTRY)


FAMILY_PREFIXES = ("tv:", "timm:")  # torchvision's and timm's models by their own names


def is_import_path(name: str) -> bool:
    """'package.module:Name' (a user's class or factory, named the way uvicorn names apps)."""
    return ":" in name and not name.startswith(FAMILY_PREFIXES)


def default_normalization(model: nn.Module) -> dict | None:
    """The input normalization a model built by `create_model` says it expects, or None (unknown).

    Only timm models say it (their `pretrained_cfg`); a torchvision model's depends on the weights
    file given, and registry models' on the data they were trained on."""
    arch = getattr(model, "achroma_arch", None) or {}
    if str(arch.get("name", "")).startswith("timm:"):
        from .timm_models import timm_normalization

        return timm_normalization(model)
    return None


def import_object(spec: str) -> Callable[..., nn.Module]:
    """The object `spec` ('package.module:Name', 'module:factory') names; the module is found on sys.path."""
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--model {spec!r}: expected package.module:Name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--model {spec!r}: cannot import {module_name!r} ({err}); is its folder on sys.path "
                         "(e.g. PYTHONPATH=.)?") from None
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--model {spec!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"--model {spec!r}: {attr!r} is not a class or function")
    return obj


def create_user_model(spec: str, **kwargs) -> nn.Module:
    """Build a user's model class or factory by import path, with keyword arguments; recorded in
    `achroma_arch` so that `load_checkpoint` can build it again."""
    model = import_object(spec)(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    model.achroma_arch = {"name": spec, **kwargs}
    return model


def create_model(name: str, in_chans: int = 3, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a model by registry name; `tv:<name>` builds a torchvision classifier and `timm:<name>` a
    timm model (random init; timm is optional); 'package.module:Name' builds a user's class with
    `kwargs` only (see `create_user_model`)."""
    if is_import_path(name):
        return create_user_model(name, **kwargs)
    if name.startswith("tv:"):
        from .torchvision_models import create_torchvision_model

        model = create_torchvision_model(name[3:], in_chans=in_chans, num_classes=num_classes, **kwargs)
    elif name.startswith("timm:"):
        from .timm_models import create_timm_model

        model = create_timm_model(name[5:], in_chans=in_chans, num_classes=num_classes, **kwargs)
    elif name in _REGISTRY:
        model = _REGISTRY[name](in_chans=in_chans, num_classes=num_classes, **kwargs)
    else:
        known = ", ".join(list_models())
        raise ValueError(f"unknown model {name!r}; known: {known}, tv:<torchvision model name>, "
                         "timm:<timm model name>, or "
                         "package.module:Name (your own class)")
    # Recorded so that checkpoints can say how to rebuild the model.
    model.achroma_arch = {"name": name, "in_chans": in_chans, "num_classes": num_classes, **kwargs}
    return model
