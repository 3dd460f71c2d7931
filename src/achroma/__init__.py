"""achroma: turn a CNN trained on color images into a smaller, faster model for grayscale images."""
from .data import load_dataset
from .io import load_checkpoint, save_checkpoint
from .models import create_model, list_models, load_weights

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load_weights", "load_dataset", "load_checkpoint", "save_checkpoint"]
