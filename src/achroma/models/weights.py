"""Load weights into a model from our checkpoints or from foreign `.th/.pt/.pth` files.

Foreign files come in many shapes; what is accepted, and nothing more:
- a bare state dict, or one inside `{'state_dict': ...}`, `{'model': ...}`, `{'model_state_dict': ...}`
  beside other entries (epoch, best_prec1, optimizer, Lightning's hyper_parameters, ...);
- key prefixes that wrap the whole model (`module.` from DataParallel, `_orig_mod.` from
  torch.compile, a Lightning module's attribute such as `model.`), stripped only when every key
  carries them and the model's own keys do not;
- tensors saved on a GPU (mapped to the CPU) or in half precision (cast on load, as PyTorch does);
- files written before PyTorch 0.4.1, whose BatchNorm layers have no `num_batches_tracked`
  buffer (PyTorch's own loader fills it with 0; so do we). No other key may be missing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import torch
import torch.nn as nn

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
OPTIONAL_SUFFIX = ".num_batches_tracked"  # absent from files saved by PyTorch < 0.4.1


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors`, or from a torch file holding a bare state dict or
    a wrapped one (see the module docstring); `module.` / `_orig_mod.` prefixes are stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # weights_only: never run pickled code from a foreign file; GPU tensors land on the CPU.
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated or not a weights file at all
        raise ValueError(f"cannot read weights from {path}: {err}") from err
    if isinstance(state, Mapping):
        for key in _WRAPPER_KEYS:
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    state = {str(k): v for k, v in state.items()}
    for prefix in _WRAPPER_PREFIXES:  # only when every key carries it (a model may own a `module` child)
        while all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def align_keys(state: Mapping[str, torch.Tensor], own: Iterable[str]) -> dict[str, torch.Tensor]:
    """`state` with a leading path shared by all its keys removed when that makes its keys the
    model's (a Lightning module's `model.`, a wrapper's `net.`); otherwise `state` unchanged."""
    own = set(own)
    state = dict(state)
    while state and not (set(state) & own):
        heads = {k.split(".", 1)[0] for k in state}
        if len(heads) != 1 or any("." not in k for k in state):
            break
        head = heads.pop() + "."
        state = {k[len(head):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load `path` into `model` strictly, with an error that lists missing and unexpected keys.

    The one key that may be missing is a BatchNorm's `num_batches_tracked` (old PyTorch files);
    it is then set to 0, as `torch.nn.Module.load_state_dict` does for such files.
    """
    own = model.state_dict()
    state = align_keys(load_state_dict_file(path), own)
    missing = [k for k in own if k not in state and not k.endswith(OPTIONAL_SUFFIX)]
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
    for key in own:
        if key.endswith(OPTIONAL_SUFFIX) and key not in state:
            state[key] = torch.zeros_like(own[key])
    model.load_state_dict(state)
    return model
