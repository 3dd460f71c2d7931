"""Transfer to a grayscale task: new heads, input geometry replayed, the metrics, end-to-end runs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from achroma.cli import main
from achroma.data import ImageDataset, InputGeometry, fit_dataset, fit_images, load_dataset
from achroma.io import load_checkpoint
from achroma.models import create_model
from achroma.report.metrics import classification_metrics
from achroma.surgery import find_classifier, replace_classifier
from achroma.training import balanced_class_weights
from achroma.transfer import TransferConfig, transfer

from conftest import DATA_DIR
from synthetic import brightness_classes

DEMO = "src/achroma/assets/demo-model.safetensors"


@pytest.mark.parametrize("name, head", [("resnet-cifar-20", "linear"), ("seed-densenet-tiny", "classifier"),
                                        ("tv:mobilenet_v2", "classifier.1")])
def test_a_new_head_keeps_every_other_weight_bit_identical(name, head):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert replace_classifier(model, 2, seed=3) == head
    after = model.state_dict()
    assert set(after) == set(before)
    changed = {k for k in before if before[k].shape != after[k].shape or not torch.equal(before[k], after[k])}
    assert changed == {f"{head}.weight", f"{head}.bias"}
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 2)
    assert model.achroma_arch["num_classes"] == 2  # a checkpoint rebuilds the new head


def test_the_head_is_found_by_the_forward_pass_not_the_name():
    class Renamed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
            self.decoy = torch.nn.Linear(4, 4)  # called first, not the output
            self.zz_out = torch.nn.Linear(4, 5)

        def forward(self, x):
            return self.zz_out(torch.relu(self.decoy(self.body(x))))

    assert find_classifier(Renamed()) == "zz_out"
    soft = torch.nn.Sequential(Renamed(), torch.nn.Softmax(1))  # something after the Linear: refused
    with pytest.raises(ValueError, match="no Linear or Conv2d layer produces"):
        find_classifier(soft)


def test_the_same_new_head_for_the_same_seed():
    a, b = create_model("resnet-cifar-20"), create_model("resnet-cifar-20")
    replace_classifier(a, 3, seed=7)
    replace_classifier(b, 3, seed=7)
    assert torch.equal(a.linear.weight, b.linear.weight)


def test_pad_centres_the_image_in_zeros_and_resize_keeps_the_mean():
    images = torch.full((2, 1, 28, 28), 200, dtype=torch.uint8)
    padded = fit_images(images, InputGeometry(32, "pad"))
    assert padded.shape == (2, 1, 32, 32)
    assert torch.equal(padded[:, :, 2:30, 2:30], images) and padded.sum() == images.sum()
    resized = fit_images(images, InputGeometry(32, "resize"))
    assert resized.shape == (2, 1, 32, 32) and torch.all(resized == 200)
    with pytest.raises(ValueError, match="cannot zero-pad"):
        fit_images(torch.zeros(1, 1, 40, 40, dtype=torch.uint8), InputGeometry(32, "pad"))
    with pytest.raises(ValueError, match="unknown input fit"):
        InputGeometry(32, "stretch")


def test_auc_and_balanced_accuracy_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y2 = np.array([0, 0, 1, 1, 1, 0, 1, 0, 1, 1])
    p2 = rng.dirichlet([1, 1], size=10)
    m = classification_metrics(p2, y2, ["normal", "pneumonia"])
    assert m["auc"] == pytest.approx(roc_auc_score(y2, p2[:, 1]), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y2, p2.argmax(1)))
    assert m["confusion"][0][0] + m["confusion"][0][1] == 4 and m["support"] == [4, 6]
    y3 = np.arange(30) % 3
    p3 = rng.dirichlet([1, 1, 1], size=30)
    m3 = classification_metrics(p3, y3)
    assert m3["auc"] == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr", average="macro"), abs=1e-12)
    assert m3["auc_kind"] == "one-vs-rest macro"
    with pytest.raises(ValueError, match="another task"):
        classification_metrics(p2, np.array([0, 2] * 5))


def test_balanced_class_weights_weigh_each_class_the_same():
    labels = torch.tensor([0] * 9 + [1])
    w = balanced_class_weights(labels, 2)
    assert torch.allclose(w, torch.tensor([10 / 18, 10 / 2]))
    assert (w * torch.bincount(labels)).unique().numel() == 1
    with pytest.raises(ValueError, match="no training image"):
        balanced_class_weights(torch.tensor([0, 0]), 2)


def _gray_set(n: int, split: str, seed: int) -> ImageDataset:
    return brightness_classes(n, seed, split=split)


@pytest.mark.parametrize("start, target", [("scratch", None), ("gray3", None), ("fold", None), ("fold", 0.5)])
def test_every_start_runs_and_scores_with_the_right_costs(start, target):
    color, meta = load_checkpoint(DEMO)
    config = TransferConfig(start=start, target=target, geometry=InputGeometry(32, "pad"), epochs=1, batch_size=16,
                            latency_runs=0)
    result = transfer(color, meta["normalization"], _gray_set(64, "train", 0), _gray_set(32, "test", 1), config,
                      val_set=_gray_set(16, "val", 2), log=None)
    assert set(result.metrics) >= {"accuracy", "balanced_accuracy", "auc", "confusion"}
    assert result.mode == ("gray3" if start == "gray3" else "gray")
    full = result.costs["macs"]
    if target is not None:
        assert full <= 0.5 * 27263808 * 1.05  # the demo model's MACs at 32x32, FlopCounter
    assert sum(map(sum, result.metrics["confusion"])) == 32
    assert result.history["best_epoch"] == 1 and "val_accuracy" in result.history["epochs"][0]


def test_transfer_cli_records_the_geometry_and_evaluate_replays_it(tmp_path, capsys):
    arrays = {}
    for split, n, seed in (("train", 48, 0), ("val", 16, 1), ("test", 24, 2)):
        d = _gray_set(n, split, seed)
        arrays[f"{split}_images"] = d.images[:, 0].numpy()
        arrays[f"{split}_labels"] = d.labels.numpy().astype(np.uint8)[:, None]
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    out = tmp_path / "run"
    args = ["transfer", "--weights", DEMO, "--dataset", "pneumoniamnist", "--data-dir", str(tmp_path), "--pad",
            "--epochs", "2", "--batch-size", "16", "--class-weights", "balanced", "--select-by", "balanced_accuracy",
            "--latency-runs", "0", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["select_by"] == "balanced_accuracy"
    assert "best epoch (validation balanced accuracy" in (out / "report.md").read_text()
    assert report["settings"]["geometry"] == {"size": 32, "fit": "pad"}
    assert (out / "confusion.png").stat().st_size > 1000
    meta = json.loads((out / "model.json").read_text())
    assert meta["input"] == {"size": 32, "fit": "pad"} and meta["arch"]["num_classes"] == 2
    capsys.readouterr()
    assert main(["evaluate", "--weights", str(out / "model"), "--dataset", "pneumoniamnist", "--data-dir",
                 str(tmp_path), "--json"]) == 0
    replay = json.loads(capsys.readouterr().out)
    assert replay["input"] == {"size": 32, "fit": "pad"}
    assert replay["accuracy"] == pytest.approx(report["metrics"]["accuracy"])
    assert replay["auc"] == pytest.approx(report["metrics"]["auc"])
    assert main(args) == 2  # never over a finished run without --force
    assert "not empty" in capsys.readouterr().err


def test_a_merge_target_needs_the_fold():
    with pytest.raises(ValueError, match="needs start 'fold'"):
        TransferConfig(start="gray3", target=0.5)
    with pytest.raises(ValueError, match="unknown start"):
        TransferConfig(start="imagenet")


requires_gray_sets = pytest.mark.skipif(
    not (DATA_DIR / "pneumoniamnist.npz").is_file() or not (DATA_DIR / "fashion-mnist").is_dir(),
    reason=f"PneumoniaMNIST / Fashion-MNIST not found in {DATA_DIR} (set ACHROMA_DATA_DIR to ../shared/datasets)")


@requires_gray_sets
@pytest.mark.parametrize("dataset, classes", [("pneumoniamnist", 2), ("fashion-mnist", 10)])
def test_real_two_and_ten_class_transfers_run_end_to_end(dataset, classes, tmp_path):
    out = tmp_path / dataset
    assert main(["transfer", "--weights", DEMO, "--dataset", dataset, "--data-dir", str(DATA_DIR), "--pad",
                 "--target-macs", "0.5", "--epochs", "1", "--limit", "16", "--test-limit", "8", "--batch-size", "16",
                 "--latency-runs", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["metrics"]["confusion"]) == classes and report["metrics"]["n"] == 8 * classes
    assert report["metrics"]["auc"] is not None and report["costs"]["latency_b1_ms"] > 0
    if dataset == "pneumoniamnist":
        assert any("partial" in n for n in report["notes"])  # the shared copy's missing 'normal' images
    model, meta = load_checkpoint(out / "model")
    test = fit_dataset(load_dataset(dataset, "test", DATA_DIR), InputGeometry.from_dict(meta["input"]))
    assert model(test.images[:2].float() / 255).shape == (2, classes)
