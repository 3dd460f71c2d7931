"""`ReceptiveFields`: one layer's fields (raw pixels, deprocessed color, luma), saved as .npz."""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: ITU-R 601 luma weights, as the notebook uses them to turn fields gray.
LUMA = np.array([0.2989, 0.5870, 0.1140])


def deprocess(raw: np.ndarray) -> np.ndarray:
    """Per image: center, scale to std 0.1, add 0.5, clip to [0, 1] (the notebook's deprocess_image).

    (N, C, H, W) pixels -> (N, H, W, C) floats in [0, 1]; std is the population std over all
    of an image's pixels and channels, with the notebook's 1e-5 guard.
    """
    x = np.asarray(raw, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"raw fields must be (N, C, H, W); got shape {x.shape}")
    x = x - x.mean(axis=(1, 2, 3), keepdims=True)
    x = x / (x.std(axis=(1, 2, 3), keepdims=True) + 1e-5) * 0.1 + 0.5
    return np.clip(x, 0.0, 1.0).transpose(0, 2, 3, 1)


def color_and_gray(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(color (N, H, W, 3), gray (N, H, W)) from raw pixels with 1 or 3 channels.

    3 channels: gray is the luma of the deprocessed color. 1 channel: gray is the deprocessed
    channel and color repeats it.
    """
    img = deprocess(raw)
    channels = img.shape[-1]
    if channels == 3:
        return img, img @ LUMA
    if channels == 1:
        return np.repeat(img, 3, axis=-1), img[..., 0]
    raise ValueError(f"fields need 1 or 3 channels to be shown; got {channels}")


@dataclass
class ReceptiveFields:
    """The receptive fields of every filter of one conv layer.

    raw: (N, C, H, W) pixel-space images (0..255 scale) after the ascent, averaged over restarts;
    color: (N, H, W, 3) deprocessed, in [0, 1]; gray: (N, H, W) luma of `color`, in [0, 1]
    (the input to distances and clustering); params: how they were made (model, steps, seed...).
    """

    layer: str
    raw: np.ndarray
    color: np.ndarray
    gray: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_raw(cls, layer: str, raw: np.ndarray, params: dict[str, Any] | None = None) -> "ReceptiveFields":
        """Build from raw pixel images, deprocessing them as the notebook does."""
        raw = np.asarray(raw, dtype=np.float32)
        color, gray = color_and_gray(raw)
        return cls(layer, raw, color.astype(np.float32), gray.astype(np.float32), dict(params or {}))

    @property
    def n_filters(self) -> int:
        return int(self.raw.shape[0])

    def save(self, path: str | os.PathLike) -> Path:
        """Write an .npz atomically (temp file in the same folder, then os.replace)."""
        from ..io import atomic_write_bytes

        buf = io.BytesIO()
        np.savez_compressed(buf, raw=self.raw, color=self.color, gray=self.gray, layer=np.array(self.layer),
                            params=np.array(json.dumps(self.params, sort_keys=True)))
        atomic_write_bytes(path, buf.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReceptiveFields":
        """Read a file written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"fields file not found: {path}")
        with np.load(path, allow_pickle=False) as data:
            missing = {"raw", "color", "gray", "layer", "params"} - set(data.files)
            if missing:
                raise ValueError(f"{path} is not a fields file (missing {', '.join(sorted(missing))})")
            return cls(str(data["layer"]), data["raw"], data["color"], data["gray"], json.loads(str(data["params"])))
