"""Checkpoints: a model saved and loaded gives the same outputs; writes are atomic."""
from __future__ import annotations

import json

import pytest
import torch

from achroma.io import is_checkpoint, load_checkpoint, save_checkpoint
from achroma.models import create_model


@pytest.mark.parametrize("name,kwargs", [("seed-densenet-tiny", {"in_chans": 1}), ("resnet-cifar-20", {}),
                                         ("densenet-bc-100", {"num_classes": 4})])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
    save_checkpoint(tmp_path / "m", model, {"mode": "gray", "normalization": {"mean": [0.5], "std": [0.25]}})
    assert is_checkpoint(tmp_path / "m.safetensors")
    loaded, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert meta["mode"] == "gray" and meta["arch"]["name"] == name
    x = torch.randn(3, model.achroma_arch["in_chans"], 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]  # no temp files left


def test_missing_or_corrupt_metadata_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "m", create_model("resnet-cifar-20"))
    (tmp_path / "m.json").write_text("{ not json")
    with pytest.raises(ValueError, match="corrupt checkpoint metadata"):
        load_checkpoint(tmp_path / "m.safetensors")
    (tmp_path / "m.json").unlink()
    with pytest.raises(FileNotFoundError, match="m.json"):
        load_checkpoint(tmp_path / "m.safetensors")


def test_truncated_weights_are_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "m", create_model("resnet-cifar-20"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read weights"):
        load_checkpoint(tmp_path / "m.safetensors")


def test_metadata_records_the_architecture(tmp_path):
    save_checkpoint(tmp_path / "m", create_model("seed-densenet", in_chans=1, stem_channels=20))
    arch = json.loads((tmp_path / "m.json").read_text())["arch"]
    assert arch == {"name": "seed-densenet", "in_chans": 1, "num_classes": 10, "stem_channels": 20}


def test_checkpoint_names_with_dots_keep_every_dot(tmp_path):
    from achroma.io import checkpoint_paths, load_checkpoint, save_checkpoint
    from achroma.models import create_model

    w, j = checkpoint_paths(tmp_path / "macs-0.5-fields.safetensors")
    assert (w.name, j.name) == ("macs-0.5-fields.safetensors", "macs-0.5-fields.json")
    assert checkpoint_paths(tmp_path / "macs-0.5-fields") == (w, j)
    model = create_model("resnet-cifar-20")
    save_checkpoint(tmp_path / "macs-0.3-l1", model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["macs-0.3-l1.json", "macs-0.3-l1.safetensors"]
    load_checkpoint(tmp_path / "macs-0.3-l1.safetensors")
