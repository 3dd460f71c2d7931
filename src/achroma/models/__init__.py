"""Model families by name: `create_model("seed-densenet")`, `"resnet-cifar-20"`, `"tv:resnet18"`, `"timm:resnet18"`."""
from . import densenet_bc, kd_mnist, resnet_cifar, seed_densenet  # noqa: F401  (registers the families)
from .registry import create_model, list_models, register_model
from .weights import load_weights, load_state_dict_file

__all__ = ["create_model", "list_models", "register_model", "load_weights", "load_state_dict_file"]
