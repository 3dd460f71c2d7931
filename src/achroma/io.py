"""Checkpoints as safetensors + a JSON of architecture, normalization and history; atomic writes."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


def atomic_write_bytes(path: str | Path, data: bytes, exclusive: bool = False) -> None:
    """Write `data` to `path` through a temporary file in the same folder, then rename.

    exclusive: never replace an existing `path` (FileExistsError instead); the file appears whole
    or not at all, and of several processes racing to create it exactly one succeeds (a hard link,
    which fails when the name exists, instead of the rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes owner-only files; outputs are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if exclusive:
            os.link(tmp, path)
            Path(tmp).unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """`model.safetensors` and `model.json` for any of `model`, `model.safetensors`, `model.json`."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    # appended, not with_suffix: a name with dots ('macs-0.5-fields') keeps all of them
    return path.parent / f"{path.name}.safetensors", path.parent / f"{path.name}.json"


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Save weights (safetensors) and metadata (JSON: `arch` from `create_model`, plus `meta`)."""
    from safetensors.torch import save

    weights_path, json_path = checkpoint_paths(path)
    arch = getattr(model, "achroma_arch", None)
    if arch is None:  # a user's own instance: its class by import path (load with load_checkpoint(path, model=...))
        cls = type(model)
        if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
            raise ValueError(f"model has no `achroma_arch` and its class {cls.__qualname__} cannot be imported by "
                             "name; build it with achroma.models.create_model('module:Name', ...)")
        arch = {"name": f"{cls.__module__}:{cls.__qualname__}"}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    info = {"format": "achroma-checkpoint/1", "arch": arch, **(meta or {})}
    if getattr(model, "achroma_surgery", False):  # shapes differ from what `arch` builds
        info.setdefault("surgery", True)
    grouping = None
    if getattr(model, "achroma_grouping", None):  # grouped pointwise convs (achroma.grouping), current shapes
        from .grouping import grouping_meta

        grouping = grouping_meta(model)
    if grouping:
        info["grouping"] = grouping
    atomic_write_bytes(weights_path, save(state))
    atomic_write_json(json_path, info)
    return weights_path


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The JSON beside a checkpoint; a clear error when it is missing or unreadable."""
    _, json_path = checkpoint_paths(path)
    if not json_path.is_file():
        raise FileNotFoundError(f"checkpoint metadata not found: {json_path}")
    try:
        return json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"corrupt checkpoint metadata {json_path}: {err}") from err


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    model: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights; returns (model, meta).

    `model`: a fresh instance of the checkpoint's class (your own, as it was before compression);
    it is rebuilt in place to the stored widths (merged, folded, grouped) and loaded. Without it the
    class is built from the checkpoint's `arch` (a registry name, or an importable 'module:Name').
    """
    from .models import create_model, load_weights

    weights_path, _ = checkpoint_paths(path)
    meta = read_checkpoint_meta(path)
    if "arch" not in meta:
        raise ValueError(f"{path}: checkpoint metadata has no 'arch' (not an achroma checkpoint?)")
    arch = dict(meta["arch"])
    if model is None:
        model = create_model(arch.pop("name"), **arch)
    else:
        model.achroma_arch = dict(meta["arch"])
    if meta.get("surgery"):  # folded or merged: rebuild the layers to the stored shapes first
        from .models import load_state_dict_file
        from .surgery import resize_to_state_dict

        resize_to_state_dict(model, load_state_dict_file(weights_path))
    if meta.get("grouping"):  # dense 1x1 convs made grouped: rebuild those layers from their plans
        from .grouping import rebuild_grouping

        rebuild_grouping(model, meta["grouping"])
    load_weights(model, weights_path)
    return model.to(map_location), meta


def is_checkpoint(path: str | Path) -> bool:
    """True when `path` names one of our checkpoints (a safetensors file with its JSON beside it)."""
    weights_path, json_path = checkpoint_paths(path)
    return weights_path.is_file() and json_path.is_file()
