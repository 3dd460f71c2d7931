"""`achroma compress` under torchrun: 2 gloo CPU processes give the merged model one process gives,
its repairs score the same, and the outputs are written once (by rank 0)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from safetensors.torch import load_file

from achroma.demo import DEMO_DATA, DEMO_MODEL, assets_dir
from ddp_launch import torchrun


def _args(out) -> list[str]:
    a = assets_dir()
    # the saved model carries the first repair, 'none': the merged model before any repair
    return ["compress", "--weights", str(a / DEMO_MODEL), "--dataset", f"tar:{a / DEMO_DATA}", "--calib-limit", "8",
            "--test-limit", "10", "--target-macs", "0.6", "--steps", "5", "--repair", "none,ls-refit,bn-train,distill",
            "--guard", "0", "--no-latency", "--threads", "1", "--quiet", "--out", str(out)]


def _rows(out) -> dict[str, float]:
    return {r["label"]: r["accuracy"] for r in json.loads((out / "report.json").read_text())["rows"]}


def test_compress_on_two_processes_merges_the_same_model_and_repairs_alike(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "achroma", *_args(tmp_path / "one")], capture_output=True, text=True,
                         timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(["-m", "achroma", *_args(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no temporary folder left behind
    merged_one, merged_two = (load_file(tmp_path / d / "model.safetensors") for d in ("one", "two"))
    assert merged_one.keys() == merged_two.keys()
    for name, weight in merged_one.items():  # the merge is deterministic: every rank builds this model
        assert weight.equal(merged_two[name]), name
    rows_one, rows_two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert rows_one.keys() == rows_two.keys()
    for label in [k for k in rows_one if k.startswith("merged")]:  # 100 test images: 0.5 point is every image
        assert abs(rows_one[label] - rows_two[label]) <= 0.005, (label, rows_one[label], rows_two[label])


def _transfer_data(tmp_path):
    """A 2-class synthetic stand-in for PneumoniaMNIST (train 64, val 16, test 32)."""
    import numpy as np
    from synthetic import brightness_classes

    arrays = {}
    for split, n, seed in (("train", 64, 0), ("val", 16, 1), ("test", 32, 2)):
        d = brightness_classes(n, seed, split=split)
        arrays[f"{split}_images"] = d.images[:, 0].numpy()
        arrays[f"{split}_labels"] = d.labels.numpy().astype(np.uint8)[:, None]
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)


def test_transfer_on_two_processes_writes_once_and_scores_alike(tmp_path):
    _transfer_data(tmp_path)
    a = assets_dir()
    args = ["transfer", "--weights", str(a / DEMO_MODEL), "--dataset", "pneumoniamnist", "--data-dir", str(tmp_path),
            "--pad", "--target-macs", "0.5", "--epochs", "2", "--batch-size", "16", "--latency-runs", "0",
            "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "achroma", *args, "--out", str(tmp_path / "one")], capture_output=True,
                         text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(["-m", "achroma", *args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    assert two.stderr.count("test accuracy") == 1  # and logs
    reports = {d: json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two")}
    assert reports["one"]["costs"]["macs"] == reports["two"]["costs"]["macs"]  # the same merged start
    acc = {d: r["metrics"]["accuracy"] for d, r in reports.items()}
    assert abs(acc["one"] - acc["two"]) <= 2 / 32, acc  # the same epochs, one global batch sharded in two
    assert load_file(tmp_path / "two" / "model.safetensors").keys() == load_file(tmp_path / "one" / "model.safetensors").keys()
