"""The command line: `evaluate --json` prints one object; bad input exits 2 with one clear line."""
from __future__ import annotations

import json

import torch

from achroma.cli import main
from achroma.io import save_checkpoint
from achroma.models import create_model

from test_data import _write_tree


def test_evaluate_json_on_our_checkpoint_and_on_a_foreign_file(tmp_path, capsys):
    _write_tree(tmp_path / "tree", classes=("a", "b", "c"), per_class=4, size=8)
    torch.manual_seed(0)
    model = create_model("resnet-cifar-20", num_classes=3)
    save_checkpoint(tmp_path / "ckpt" / "model", model, {"mode": "color", "normalization": {"mean": [0.5], "std": [0.5]}})
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "foreign.th")
    data = ["--dataset", f"folder:{tmp_path / 'tree'}", "--json"]
    assert main(["evaluate", "--weights", str(tmp_path / "ckpt" / "model.safetensors"), *data]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert {"accuracy", "loss", "n", "params"} <= set(ours) and ours["n"] == 12
    assert ours["params"] == sum(p.numel() for p in model.parameters())
    assert main(["evaluate", "--model", "resnet-cifar-20", "--num-classes", "3", "--weights",
                 str(tmp_path / "foreign.th"), "--normalize", "half", *data]) == 0
    foreign = json.loads(capsys.readouterr().out)
    assert foreign["accuracy"] == ours["accuracy"] and abs(foreign["loss"] - ours["loss"]) < 1e-6


def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys):
    assert main(["evaluate", "--model", "resnet-cifar-21", "--dataset", "folder:/nonexistent"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["evaluate", "--model", "resnet-cifar-20", "--dataset", f"folder:{tmp_path / 'nope'}"]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "broken.pth").write_bytes(b"garbage")
    assert main(["evaluate", "--model", "resnet-cifar-20", "--weights", str(tmp_path / "broken.pth")]) == 2
    assert "cannot read weights" in capsys.readouterr().err
