"""Load weights into a model from our checkpoints or from foreign `.th/.pt/.pth` files."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors`, or from a torch file holding a bare state dict or
    `{'state_dict': ...}` / `{'model': ...}`; a DataParallel `module.` prefix is stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # weights_only: never run pickled code from a foreign file.
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated or not a weights file at all
        raise ValueError(f"cannot read weights from {path}: {err}") from err
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {_strip_prefix(k): v for k, v in state.items()}


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load `path` into `model` strictly, with an error that lists missing and unexpected keys."""
    state = load_state_dict_file(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        lines = [f"weights in {path} do not fit the model"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing[:8])}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {', '.join(unexpected[:8])}")
        if bad_shape:
            lines.append(f"  shape mismatch ({len(bad_shape)}): {'; '.join(bad_shape[:4])}")
        raise ValueError("\n".join(lines))
    model.load_state_dict(state)
    return model
