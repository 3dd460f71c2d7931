"""Training: steps lower the loss, schedules, resume, and DDP gradients equal single-process ones."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from achroma.data import BatchLoader, ImageDataset
from achroma.models import create_model
from achroma.training import TrainConfig, classification_loss, evaluate, lr_at, train

from ddp_launch import run_ddp, tiny_batch


def make_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "bn":
        return create_model("seed-densenet-tiny", num_classes=3)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def separable_dataset(n=120) -> ImageDataset:
    """Classes told apart by brightness: a model must learn it within a few epochs."""
    labels = torch.arange(n) % 3
    base = (labels * 100 + 20).view(n, 1, 1, 1).expand(n, 3, 16, 16)
    noise = torch.randint(0, 30, (n, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    return ImageDataset((base + noise).to(torch.uint8), labels, ["dark", "mid", "bright"], name="separable")


def test_training_learns_a_separable_task(tmp_path):
    torch.manual_seed(0)
    model = create_model("seed-densenet-tiny", num_classes=3)
    data = separable_dataset()
    config = TrainConfig(epochs=4, batch_size=20, lr=0.05, augment=False, device="cpu")
    history = train(model, data, config, test_set=data)
    assert history["epochs"][-1]["test_accuracy"] == 1.0
    assert history["epochs"][-1]["train_loss"] < history["epochs"][0]["train_loss"]


def test_resume_continues_from_the_last_epoch(tmp_path):
    data = separable_dataset(60)
    config = TrainConfig(epochs=1, batch_size=20, lr=0.05, device="cpu")
    torch.manual_seed(0)
    first = train(create_model("seed-densenet-tiny", num_classes=3), data, config, out_dir=tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "last.state.pt").is_file()
    config.epochs = 2
    resumed = train(create_model("seed-densenet-tiny", num_classes=3), data, config, out_dir=tmp_path)
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    assert resumed["epochs"][0]["train_loss"] == first["epochs"][0]["train_loss"]


def test_cosine_and_step_schedules():
    cfg = TrainConfig(epochs=10, lr=0.1, schedule="cosine")
    assert lr_at(cfg, 0) == 0.1 and abs(lr_at(cfg, 5) - 0.05) < 1e-12 and lr_at(cfg, 10) < 1e-12
    cfg = TrainConfig(epochs=10, lr=0.1, schedule="step", milestones=(0.5, 0.75))
    assert [round(lr_at(cfg, e), 6) for e in (0, 5, 8)] == [0.1, 0.01, 0.001]
    assert lr_at(TrainConfig(epochs=10, lr=0.1, warmup_epochs=2), 1) == 0.05


def test_seed_densenet_l1_penalty_enters_the_loss():
    model = create_model("seed-densenet-tiny", num_classes=3)
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    plain = nn.functional.cross_entropy(model(x), y)
    assert classification_loss(model, x, y) > plain
    assert torch.allclose(classification_loss(model, x, y) - plain, model.regularization_loss())


def test_evaluate_refuses_a_channel_mismatch():
    model = create_model("resnet-cifar-20", in_chans=1)
    try:
        evaluate(model, tiny_batch(), mode="color", progress=False)
    except ValueError as err:
        assert "--mode gray" in str(err)
    else:
        raise AssertionError("a 1-channel model accepted color input")


def _single_process_grads(kind: str, shards: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean of per-shard gradients: what DDP computes (BN statistics are per process on CPU)."""
    model = make_model(kind)
    loader = BatchLoader(tiny_batch(), batch_size=8, normalize="cifar")
    x, y = next(iter(loader))
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for idx in shards:
        model.zero_grad()
        classification_loss(model, x[idx], y[idx]).backward()
        for n, p in model.named_parameters():
            total[n] += p.grad / len(shards)
    return total


def test_ddp_two_cpu_processes_match_a_single_process_step(tmp_path):
    ddp = run_ddp("training", tmp_path / "grads.pt")
    shards = [torch.arange(0, 8, 2), torch.arange(1, 8, 2)]  # how BatchLoader shards 8 images over 2 ranks
    # Without batch statistics, DDP equals one step on the whole batch.
    full = _single_process_grads("no-bn", [torch.arange(8)])
    for name, grad in full.items():
        torch.testing.assert_close(ddp["no-bn"][name], grad, rtol=1e-5, atol=1e-6)
    # With BatchNorm on CPU each process normalizes its own shard: gradient accumulation over the shards.
    accumulated = _single_process_grads("bn", shards)
    for name, grad in accumulated.items():
        torch.testing.assert_close(ddp["bn"][name], grad, rtol=1e-4, atol=1e-6)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    from achroma.training import EarlyStopping

    model = torch.nn.Linear(2, 2)
    stopper = EarlyStopping(patience=2)
    for epoch, score in enumerate([0.5, 0.7, 0.6, 0.65], start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        stop = stopper.step(score, epoch, model)
    assert stop and stopper.best_epoch == 2
    stopper.restore(model)
    assert torch.all(model.weight == 2)
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)


def test_train_with_a_validation_split_stops_early_and_restores_the_best(tmp_path):
    from synthetic import brightness_classes

    train_set, val_set = brightness_classes(64, 0), brightness_classes(32, 1, split="val")
    model = create_model("resnet-cifar-20", in_chans=1, num_classes=2)
    config = TrainConfig(epochs=6, batch_size=16, lr=0.0, momentum=0.0, mode="gray", normalize="none",
                         augment=False, device="cpu", patience=2)
    history = train(model, train_set, config, val_set=val_set)
    assert len(history["epochs"]) == 3  # lr 0: no epoch beats the first; stops after 2 more
    assert history["best_epoch"] == 1
    with pytest.raises(ValueError, match="validation set"):
        train(model, train_set, config)


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW),
                                       ("adadelta", torch.optim.Adadelta)])
def test_the_optimizer_is_chosen_by_name(name, cls):
    from achroma.training import make_optimizer

    opt = make_optimizer(torch.nn.Linear(2, 2), TrainConfig(optimizer=name, lr=1.0))
    assert isinstance(opt, cls)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(torch.nn.Linear(2, 2), TrainConfig(optimizer="lbfgs"))


def test_constant_schedule_and_crops_without_flips():
    from achroma.data import random_crop_flip
    from achroma.training import lr_at

    assert lr_at(TrainConfig(lr=1.0, schedule="constant", epochs=3), 2.9) == 1.0
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_crop_flip(x, padding=0, generator=g, flip=False), x)  # no shift, never flipped


def test_evaluate_balanced_accuracy_equals_scikit_learn_on_an_imbalanced_set():
    from sklearn.metrics import balanced_accuracy_score

    from achroma.data import ImageDataset
    from achroma.training import evaluate

    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 30 + [1] * 6 + [2] * 4)
    brightness = torch.rand(40, 1, 1, 1, generator=g)  # the model's class: bright 0, middle 1, dark 2
    images = (brightness.expand(40, 1, 8, 8) * 255).to(torch.uint8)
    data = ImageDataset(images, labels, classes=["a", "b", "c"], name="imbalanced")
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([2.0, 0.0, -2.0]).view(3, 1, 1, 1))
        model[0].bias.copy_(torch.tensor([-1.2, 0.0, 0.8]))
    result = evaluate(model, data, mode="gray", normalize="none", batch_size=7, progress=False)
    with torch.no_grad():
        predicted = model(images.float() / 255).argmax(1)
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted), abs=1e-12)
    assert len(set(predicted.tolist())) > 1  # a model that says one class everywhere would prove little
    assert result["accuracy"] == pytest.approx((predicted == labels).double().mean().item(), abs=1e-12)


@pytest.mark.parametrize("select_by", ["accuracy", "balanced_accuracy"])
def test_the_kept_epoch_is_the_best_by_the_chosen_validation_score(select_by):
    from synthetic import brightness_classes

    train_set, val_set = brightness_classes(64, 0), brightness_classes(32, 1, split="val")
    keep = torch.cat([torch.nonzero(val_set.labels == 0).flatten(), torch.nonzero(val_set.labels == 1).flatten()[:4]])
    val_set = val_set.subset(keep)  # imbalanced, 16:4
    model = create_model("resnet-cifar-20", in_chans=1, num_classes=2)
    config = TrainConfig(epochs=4, batch_size=16, lr=0.05, mode="gray", normalize="none", augment=False,
                         device="cpu", select_by=select_by)
    history = train(model, train_set, config, val_set=val_set)
    scores = [e[f"val_{select_by}"] for e in history["epochs"]]
    assert history["select_by"] == select_by and history["best_val_score"] == max(scores)
    assert history["best_epoch"] == scores.index(max(scores)) + 1
    kept = evaluate(model, val_set, mode="gray", normalize="none", progress=False)
    assert kept[select_by] == pytest.approx(max(scores))
    with pytest.raises(ValueError, match="select_by"):
        TrainConfig(select_by="auc")
