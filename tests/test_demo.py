"""`achroma demo` on the embedded model and data: the shipped assets are there, trained, and the
whole pipeline runs on them offline (with a smaller repair budget and no latency timing, for speed)."""
from __future__ import annotations

import json

import pytest
import torch

from achroma.demo import DEMO_DATA, DEMO_MODEL, assets_dir, run_demo
from achroma.io import load_checkpoint


def test_assets_are_shipped_and_small():
    for name, limit_mb in ((DEMO_MODEL, 2), (DEMO_DATA, 5)):
        path = assets_dir() / name
        assert path.is_file(), f"{path} is missing"
        assert path.stat().st_size < limit_mb * 2**20
    model, meta = load_checkpoint(assets_dir() / DEMO_MODEL)
    assert meta["arch"]["name"] == "seed-densenet-tiny" and meta["mode"] == "color"
    assert sum(p.numel() for p in model.parameters()) == 62_866


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    report = run_demo(out, calib_per_class=10, latency=False, progress=False)
    return out, report


def test_demo_prints_the_table_and_writes_a_gray_model(demo):
    out, report = demo
    rows = {r["key"]: r for r in report["rows"]}
    assert list(rows) == ["color", "color-gray3", "folded", "merged", "merged+distill", "folded+distill",
                          "merged+bn-train", "folded+bn-train"]
    assert report["final_model"] == "merged+distill"
    assert rows["color"]["accuracy"] > 0.5, "the embedded model should be trained"
    # the fold is exact: the gray model scores what the color model scores on gray images copied to 3 channels
    assert abs(rows["folded"]["accuracy"] - rows["color-gray3"]["accuracy"]) <= 0.002
    assert rows["merged"]["params"] < rows["folded"]["params"] < rows["color"]["params"]
    assert json.loads((out / "report.json").read_text())["demo"] is True
    model, meta = load_checkpoint(out / "model.safetensors")
    assert meta["mode"] == "gray"
    assert model.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 10)


def test_demo_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        run_demo(tmp_path, calib_per_class=10, latency=False, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("kind", ["bn-stats", "distill"])
def test_repairs_keep_a_trained_models_accuracy(kind):
    """A repair of the unmerged folded model must not lose accuracy. BN statistics must come from
    images drawn the way the weights were last trained: bn-stats re-estimated on plain images cost
    this model about 10 points."""
    from achroma.data import load_dataset
    from achroma.fold import fold_to_gray
    from achroma.pipeline import RepairConfig, repair_model
    from achroma.training import evaluate

    model, meta = load_checkpoint(assets_dir() / DEMO_MODEL)
    gray, _ = fold_to_gray(model.eval(), meta["normalization"])
    data = f"tar:{assets_dir() / DEMO_DATA}"
    train, test = load_dataset(data, "train").stratified_subset(100), load_dataset(data, "test")
    score = lambda net: evaluate(net.eval(), test, mode="gray", normalize="none", progress=False)["accuracy"]  # noqa: E731
    before = score(gray)
    after = score(repair_model(gray, kind, train, RepairConfig(), teacher=model, teacher_normalize=meta["normalization"]))
    assert after > before - 0.02
