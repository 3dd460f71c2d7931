"""Tests for achroma.distill and the seed's KD models: losses, paired views, the loop, the CLI."""
from __future__ import annotations

import argparse
import importlib

import pytest
import torch
import torch.nn.functional as F

import achroma.models.kd_mnist as kd_mnist
from achroma.cli import distill as distill_cli
from achroma.data import BatchLoader, ImageDataset, get_normalization, to_luma
from achroma.distill import PairedBatchLoader, distill, hinton_kd, logit_mse, two_views
from achroma.io import load_checkpoint
from achroma.models import create_model
from achroma.training import TrainConfig, count_parameters


pytestmark = pytest.mark.usefixtures("one_thread")


def _color_set(n: int = 64, size: int = 12, classes: int = 4, seed: int = 0) -> ImageDataset:
    """Random RGB images whose class shifts one channel's brightness: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 160, (n, 3, size, size), generator=g)
    images[torch.arange(n), labels % 3] += (labels * 30)[:, None, None]
    return ImageDataset(images.clamp(0, 255).to(torch.uint8), labels, [f"c{i}" for i in range(classes)], name="toy")


# --- models -------------------------------------------------------------------------------------

def test_teacher_has_the_seed_parameter_count():
    assert count_parameters(create_model("kd-teacher", in_chans=1, num_classes=10)) == 1_199_882


@pytest.mark.parametrize("hidden", [1, 6, 32, 128])
def test_student_parameter_count(hidden):
    model = create_model("kd-student", in_chans=1, num_classes=10, hidden=hidden)
    assert count_parameters(model) == 18_826 + 9_227 * hidden
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_seed_student_is_16x_smaller():
    teacher = count_parameters(create_model("kd-teacher", in_chans=1))
    student = count_parameters(create_model("kd-student", in_chans=1, hidden=6))
    assert student == 74_188
    assert round(teacher / student, 1) == 16.2


def test_pool_is_the_seeds_2x2_max_pool_at_28x28_and_other_sizes_fit():
    model = create_model("kd-teacher", in_chans=1).eval()
    x = torch.randn(3, 64, 24, 24)
    assert torch.equal(model.features[4](x), F.max_pool2d(x, 2))
    assert create_model("kd-student", in_chans=3, hidden=4)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_registration_survives_a_second_import():
    importlib.reload(kd_mnist)
    assert create_model("kd-student", hidden=3).achroma_arch["hidden"] == 3


# --- losses -------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_with_hard_label_weight_one_is_cross_entropy(T):
    s, t = torch.randn(16, 10), torch.randn(16, 10)
    y = torch.randint(0, 10, (16,))
    assert torch.equal(hinton_kd(s, t, y, T=T, alpha=0.0), F.cross_entropy(s, y))


def test_kd_at_T1_with_a_one_hot_teacher_is_cross_entropy():
    s, y = torch.randn(16, 10), torch.randint(0, 10, (16,))
    t = 1e4 * F.one_hot(y, 10).float()  # softmax is exactly one-hot: KL = CE - 0
    assert torch.allclose(hinton_kd(s, t, None, T=1.0, alpha=1.0), F.cross_entropy(s, y), atol=1e-5)


def test_kd_matches_its_formula():
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    T, alpha = 3.0, 0.7
    p, q = torch.softmax(t / T, 1), torch.softmax(s / T, 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    expected = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)
    assert torch.allclose(hinton_kd(s, t, y, T=T, alpha=alpha), expected, atol=1e-6)


def test_kd_rejects_bad_settings():
    s = torch.randn(2, 3)
    with pytest.raises(ValueError):
        hinton_kd(s, s, None, T=2.0, alpha=0.5)  # labels needed
    with pytest.raises(ValueError):
        hinton_kd(s, s, None, T=0.0, alpha=1.0)


def test_logit_mse_is_zero_only_when_logits_agree():
    t = torch.randn(4, 10)
    assert logit_mse(t.clone(), t).item() == 0.0
    assert logit_mse(t + 0.1, t).item() > 0.0
    assert torch.allclose(logit_mse(t + 0.5, t), torch.tensor(0.25))


# --- paired views -------------------------------------------------------------------------------

def test_student_sees_the_luma_of_the_teachers_augmented_color_images():
    data = _color_set(n=40)
    norm = get_normalization("cifar")
    loader = PairedBatchLoader(data, 16, teacher_mode="color", student_mode="gray", teacher_normalize="cifar",
                               student_normalize="cifar", shuffle=True, augment=True, seed=3)
    gray_norm = norm.for_channels(1)
    batches = 0
    for xt, xs, _ in loader:
        color = xt * torch.tensor(norm.std).view(1, 3, 1, 1) + torch.tensor(norm.mean).view(1, 3, 1, 1)
        gray = xs * gray_norm.std[0] + gray_norm.mean[0]
        assert xt.shape[1] == 3 and xs.shape[1] == 1
        assert torch.allclose(gray, to_luma(color), atol=1e-5)
        batches += 1
    assert batches == 3


def test_both_views_share_one_augmentation():
    images = _color_set(n=8).images
    xt, xs = two_views(images, "color", "gray", augment=True, generator=torch.Generator().manual_seed(0))
    plain, _ = two_views(images, "color", "gray", augment=False)
    assert not torch.equal(xt, plain)  # the crop/flip did happen...
    assert torch.allclose(xs, to_luma(xt))  # ...to both views alike


def test_student_view_matches_a_plain_loader_batch_for_batch():
    data = _color_set(n=48)
    kw = dict(shuffle=True, augment=True, seed=5, drop_last=True)
    paired = PairedBatchLoader(data, 16, "color", "gray", "cifar", "cifar", **kw)
    plain = BatchLoader(data, 16, mode="gray", normalize="cifar", **kw)
    paired.set_epoch(2)
    plain.set_epoch(2)
    for (_, xs, y), (x, y2) in zip(paired, plain):
        assert torch.equal(xs, x) and torch.equal(y, y2)


# --- the loop -----------------------------------------------------------------------------------

def _pair(seed: int = 0):
    torch.manual_seed(seed)
    teacher = create_model("kd-teacher", in_chans=3, num_classes=4, img_size=12)
    student = create_model("kd-student", in_chans=1, num_classes=4, img_size=12, hidden=16)
    return teacher, student


@pytest.mark.parametrize("loss", ["mse", "kd"])
def test_distillation_moves_student_logits_toward_the_teacher(loss, tmp_path):
    data = _color_set(n=64)
    teacher, student = _pair()
    loader = PairedBatchLoader(data, 64, "color", "gray", "cifar", "cifar")
    xt, xs, _ = next(iter(loader))
    teacher.eval(), student.eval()
    with torch.no_grad():
        target = teacher(xt)
        before = F.mse_loss(student(xs), target).item()
    config = TrainConfig(epochs=8, batch_size=16, lr=0.02, augment=False, normalize="cifar", device="cpu")
    history = distill(student, teacher, data, config, loss=loss, T=2.0, alpha=1.0, test_set=data,
                      out_dir=tmp_path, progress=False)
    student.eval()
    with torch.no_grad():
        after = F.mse_loss(student(xs), target).item()
    assert after < 0.5 * before
    assert len(history["epochs"]) == 8 and "test_accuracy" in history["epochs"][-1]
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())


def test_distill_checkpoint_records_mode_and_settings(tmp_path):
    data = _color_set(n=32)
    teacher, student = _pair()
    config = TrainConfig(epochs=1, batch_size=16, lr=0.01, augment=False, normalize="cifar", device="cpu")
    distill(student, teacher, data, config, loss="kd", T=3.0, alpha=0.5, out_dir=tmp_path, progress=False)
    model, meta = load_checkpoint(tmp_path / "model")
    assert meta["mode"] == "gray" and meta["distillation"]["T"] == 3.0
    assert meta["distillation"]["teacher_arch"]["name"] == "kd-teacher"
    assert torch.allclose(model.eval()(torch.zeros(1, 1, 12, 12)), student.eval()(torch.zeros(1, 1, 12, 12)))


def test_distill_rejects_a_student_that_cannot_take_its_mode():
    teacher, _ = _pair()
    color_student = create_model("kd-student", in_chans=3, num_classes=4, img_size=12)
    with pytest.raises(ValueError, match="student"):
        distill(color_student, teacher, _color_set(), TrainConfig(epochs=1, device="cpu"), progress=False)


# --- CLI ----------------------------------------------------------------------------------------

def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="achroma")
    distill_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_parse_kw():
    assert distill_cli.parse_kw(["hidden=32", "name=abc", "layers=(2, 2)"]) == {
        "hidden": 32, "name": "abc", "layers": (2, 2)}
    with pytest.raises(ValueError):
        distill_cli.parse_kw(["hidden"])


def test_cli_distills_a_color_teacher_into_a_gray_student(tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setenv("ACHROMA_CACHE_DIR", str(tmp_path / "cache"))
    data = _color_set(n=24, classes=2)
    for split in ("train", "test"):
        for i, (img, label) in enumerate(zip(data.images, data.labels)):
            folder = tmp_path / "toy" / split / f"c{int(label)}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    code = _cli(["distill", "--teacher", "kd-teacher", "--teacher-kw", "img_size=12", "num_classes=2",
                 "--student", "kd-student", "--student-kw", "hidden=8", "img_size=12",
                 "--dataset", f"folder:{tmp_path / 'toy'}", "--epochs", "1", "--batch-size", "8", "--lr", "0.01",
                 "--loss", "kd", "--T", "2", "--alpha", "0.5", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 0
    model, meta = load_checkpoint(tmp_path / "out" / "model")
    assert model.achroma_arch["in_chans"] == 1 and model.achroma_arch["hidden"] == 8
    assert meta["mode"] == "gray" and meta["distillation"]["loss"] == "kd"
    assert "student (gray)" in capsys.readouterr().out
