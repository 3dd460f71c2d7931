"""Tests for achroma.repair: BN-only training, BN statistics re-estimation, and their alignment."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from achroma.data import BatchLoader, ImageDataset
from achroma.models import create_model
from achroma.repair import bn_align, bn_recalibrate, bn_train

torch.set_num_threads(1)

FAMILIES = ["seed-densenet-tiny", "resnet-cifar-20", "tv:mobilenet_v2"]
_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _batches(n: int = 2, size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def _bn_keys(model: nn.Module) -> tuple[set[str], set[str]]:
    """State-dict keys of BN affine parameters and of BN running statistics."""
    affine, stats = set(), set()
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            affine |= {f"{name}.weight", f"{name}.bias"}
            stats |= {f"{name}.{s}" for s in _STATS}
    return affine, stats


def _changed(before: dict, model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


@pytest.mark.parametrize("name", FAMILIES)
def test_bn_train_changes_only_bn(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    out = bn_train(model, _batches(), lr=0.1)
    assert out is model
    affine, stats = _bn_keys(model)
    changed = _changed(before, model)
    assert changed <= affine | stats  # nothing outside the BN layers moved
    assert changed & affine  # the BN affine parameters were trained
    assert not model.training  # mode restored
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())


def test_bn_train_with_batch_loader():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ImageDataset(images, torch.arange(16) % 10, [str(i) for i in range(10)])
    loader = BatchLoader(data, batch_size=8, mode="gray", normalize="none")
    torch.manual_seed(0)
    model = create_model("resnet-cifar-20", in_chans=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bn_train(model, loader, epochs=2)
    affine, stats = _bn_keys(model)
    assert _changed(before, model) <= affine | stats


@pytest.mark.parametrize("name", FAMILIES)
def test_bn_recalibrate_changes_only_running_stats(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momenta = [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn_recalibrate(model, _batches(n=3), max_batches=2) is model
    _, stats = _bn_keys(model)
    changed = _changed(before, model)
    assert changed and changed <= stats
    assert model.training
    assert momenta == [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.num_batches_tracked.item() == 2 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_bn_recalibrate_is_a_cumulative_average():
    """Two batches: running mean = mean of the batch means; var = mean of the unbiased batch variances."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))
    batches = _batches(n=2)
    bn_recalibrate(model, batches)
    with torch.no_grad():
        feats = [model[0](x) for x, _ in batches]
    means = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    vars_ = torch.stack([f.transpose(0, 1).flatten(1).var(1, unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(model[1].running_mean, means, atol=1e-5)
    assert torch.allclose(model[1].running_var, vars_, atol=1e-5)


def _stale_statistics(name: str) -> nn.Module:
    """A float64 model whose BN statistics and affines describe nothing it computes (as after a merge)."""
    torch.manual_seed(0)
    model = create_model(name).double().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    return model


def _bn_train_mode(model: nn.Module) -> nn.Module:
    """Batch statistics in every BN, the rest (dropout) in eval mode: a training step's normalization."""
    for m in model.modules():
        m.training = isinstance(m, nn.modules.batchnorm._BatchNorm)
    return model


@pytest.mark.parametrize("name", FAMILIES)
def test_bn_align_keeps_the_function_and_makes_train_mode_agree(name):
    """One calibration batch: after alignment the eval outputs are unchanged and a BN train-mode pass on that
    batch (its own statistics) gives the same outputs; before it, it did not."""
    model = _stale_statistics(name)
    x = torch.randn(16, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
        trained_before = _bn_train_mode(copy.deepcopy(model))(x)
    assert (trained_before - before).abs().max() > 1e-2 * before.abs().max()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert bn_align(model, [(x, torch.zeros(16))]) is model
    assert not model.training
    with torch.no_grad():
        after = model.eval()(x)
        trained = _bn_train_mode(model)(x)
    scale = before.abs().max()
    assert (after - before).abs().max() < 1e-9 * scale
    assert (trained - before).abs().max() < 1e-6 * scale
    affine, stats = _bn_keys(model)
    assert _changed(state, model) <= affine | stats  # only the BNs moved


def test_bn_align_over_batches_uses_the_moments_of_them_all():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).double().eval()
    batches = [(x.double(), y) for x, y in _batches(n=3)]
    with torch.no_grad():
        feats = torch.cat([model[0](x) for x, _ in batches])
    bn_align(model, batches)
    assert torch.allclose(model[1].running_mean, feats.mean((0, 2, 3)))
    assert torch.allclose(model[1].running_var, feats.transpose(0, 1).flatten(1).var(1, unbiased=False))
    with pytest.raises(ValueError, match="yielded no batches"):
        bn_align(model, [])


def test_repair_errors():
    no_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    with pytest.raises(ValueError, match="no BatchNorm"):
        bn_train(no_bn, _batches())
    with pytest.raises(ValueError, match="no BatchNorm"):
        bn_recalibrate(no_bn, _batches())
    model = create_model("resnet-cifar-20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="yielded no batches"):
        bn_recalibrate(model, [])
    assert not _changed(before, model)  # statistics kept when there was nothing to estimate from
