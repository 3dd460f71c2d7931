"""Data: one interface for CIFAR-10 (incl. the JPEG copy), Fashion-MNIST, MedMNIST and your own folders."""
from .catalog import DATASETS, DISPLAY_NAMES, cache_dir, data_dirs, known_caveats, load_dataset
from .color import LUMA, MODES, PRESETS, Normalization, apply_mode, get_normalization, mode_channels, to_luma
from .dataset import ImageDataset
from .geometry import FITS, InputGeometry, fit_dataset, fit_images
from .loader import BatchLoader, random_crop_flip

__all__ = [
    "DATASETS", "DISPLAY_NAMES", "cache_dir", "data_dirs", "known_caveats", "load_dataset", "LUMA", "MODES", "PRESETS",
    "Normalization", "apply_mode", "get_normalization", "mode_channels", "to_luma", "ImageDataset",
    "BatchLoader", "random_crop_flip", "FITS", "InputGeometry", "fit_dataset", "fit_images",
]
