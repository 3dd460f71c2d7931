"""Color modes (color, gray, gray3) and per-channel normalization presets."""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: ITU-R 601 luma weights, as the notebook (and tf.image.rgb_to_grayscale) use them.
LUMA = (0.2989, 0.5870, 0.1140)
MODES = ("color", "gray", "gray3")


def mode_channels(mode: str) -> int:
    """Channels a model must take for images in `mode`."""
    check_mode(mode)
    return 1 if mode == "gray" else 3


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def to_luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float RGB -> (B, 1, H, W) gray: 0.2989 R + 0.5870 G + 0.1140 B."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def apply_mode(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Turn a float batch (1 or 3 channels) into the channels that `mode` asks for."""
    check_mode(mode)
    c = x.shape[1]
    if mode == "color":
        if c != 3:
            raise ValueError("mode 'color' needs RGB images; this data set is grayscale: use 'gray3' "
                             "to feed a color model or 'gray' for a 1-channel model")
        return x
    gray = to_luma(x) if c == 3 else x
    return gray if mode == "gray" else gray.expand(-1, 3, -1, -1)


@dataclass(frozen=True)
class Normalization:
    """x -> (x - mean) / std per channel, on images scaled to [0, 1]."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def for_channels(self, channels: int) -> "Normalization":
        """Broadcast a 1-value preset to 3 channels, or reduce a 3-value one to gray by luma weights."""
        n = len(self.mean)
        if n == channels:
            return self
        if n == 1:
            return Normalization(self.mean * channels, self.std * channels)
        if n == 3 and channels == 1:
            mean = sum(w * m for w, m in zip(LUMA, self.mean))
            std = sum(w * s for w, s in zip(LUMA, self.std))
            return Normalization((mean,), (std,))
        raise ValueError(f"normalization with {n} values cannot apply to {channels} channels")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.for_channels(x.shape[1])
        mean = torch.tensor(norm.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(norm.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


PRESETS = {
    "none": Normalization((0.0,), (1.0,)),
    "cifar": Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": Normalization((0.5,), (0.5,)),
}


def get_normalization(spec: "str | dict | Normalization | None") -> Normalization:
    """A preset name, 'MEAN,..:STD,..' (e.g. '0.5,0.5,0.5:0.25,0.25,0.25'), a dict or a Normalization."""
    if spec is None:
        return PRESETS["none"]
    if isinstance(spec, Normalization):
        return spec
    if isinstance(spec, dict):
        return Normalization(tuple(spec["mean"]), tuple(spec["std"]))
    if spec in PRESETS:
        return PRESETS[spec]
    if ":" in spec:
        try:
            mean, std = (tuple(float(v) for v in part.split(",")) for part in spec.split(":"))
        except ValueError as err:
            raise ValueError(f"cannot parse normalization {spec!r}: {err}") from err
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"normalization {spec!r}: mean and std need equal lengths and std > 0")
        return Normalization(mean, std)
    raise ValueError(f"unknown normalization {spec!r}; presets: {', '.join(PRESETS)} or 'MEAN,..:STD,..'")
