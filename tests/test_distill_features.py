"""Feature matching in distillation: merged channels trained toward their clusters' means."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from synthetic import random_images

from achroma.distill.features import FeatureMatch
from achroma.models import create_model
from achroma.pipeline import Budget, CompressConfig, Compressor
from achroma.pipeline.merging import refit_merges
from achroma.repair import RepairConfig, RepairJob, run_repair


class _Tiny(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def _duplicates() -> tuple[_Tiny, _Tiny]:
    """A reference whose channels come in identical pairs (0, 1) and (2, 3), and the student that keeps one of each."""
    torch.manual_seed(0)
    student, reference = _Tiny(2).eval(), _Tiny(4).eval()
    with torch.no_grad():
        student.bn.running_mean.uniform_(-1, 1), student.bn.running_var.uniform_(0.5, 2), student.bn.weight.uniform_(0.5, 2)
        for name in ("weight", "bias"):
            getattr(reference.conv, name).copy_(getattr(student.conv, name).repeat_interleave(2, 0))
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(reference.bn, name).copy_(getattr(student.bn, name).repeat_interleave(2, 0))
    return student, reference


def test_merged_duplicates_meet_their_targets_exactly_and_a_change_is_measured_against_the_cluster_means():
    student, reference = _duplicates()
    match = FeatureMatch(reference, {"bn": [[0, 1], [2, 3]]}, weight=2.0)
    x = torch.rand(5, 1, 8, 8)
    with match.attached(student) as session:
        session.targets(x)
        student(x)
        assert float(session.loss().detach()) == pytest.approx(0.0, abs=1e-10)
        with torch.no_grad():
            student.bn.bias.add_(torch.tensor([0.5, 0.0]))
        s = student.bn(student.conv(x))
        t = reference.bn(reference.conv(x)).detach()
        t = torch.stack([t[:, :2].mean(1), t[:, 2:].mean(1)], 1)
        expected = 2.0 * ((s - t).pow(2).sum() / t.pow(2).sum())
        assert float(session.loss().detach()) == pytest.approx(float(expected), rel=1e-5)
    assert not student.bn._forward_hooks  # the hooks go with the block
    with pytest.raises(ValueError, match="distinct reference channels"):
        FeatureMatch(reference, {"bn": [[0, 1], [1, 3]]})
    with pytest.raises(ValueError, match="weight"):
        FeatureMatch(reference, {}, weight=-1.0)


def _near_duplicates() -> tuple[_Tiny, _Tiny, object]:
    """A student of 2 channels and a reference of 4 whose pairs (0, 1), (2, 3) are the student's
    channels plus noise, its statistics taken on the images; and those images."""
    from synthetic import brightness_classes

    torch.manual_seed(0)
    student, reference = _Tiny(2), _Tiny(4)
    images = brightness_classes(128, size=8)
    with torch.no_grad():
        for name in ("weight", "bias"):
            own = getattr(student.conv, name).repeat_interleave(2, 0)
            getattr(reference.conv, name).copy_(own + 0.3 * torch.randn_like(own))
        reference.bn.momentum = None
        reference.train()(images.images.float() / 255)
    return student, reference.eval(), images


def _distilled(student: nn.Module, reference: nn.Module, images, merges, weight: float) -> nn.Module:
    config = RepairConfig(batch_size=16, distill_features=weight, distill_teacher="gray", distill_lr=0.02, epochs=3)
    job = RepairJob(images, config, 0, "cpu", "gray", "none", None, None, None, reference, merges)
    return run_repair(copy.deepcopy(student), "distill", job)


MERGES = {"conv": ([0, 0, 1, 1], [0, 2])}  # the conv's channels 0, 1 became the student's 0; 2, 3 its 1


def test_the_feature_term_brings_the_merged_channels_to_their_cluster_means(one_thread):
    student, reference, images = _near_duplicates()

    def error(model: nn.Module) -> float:
        x = images.images[:64].float() / 255
        with FeatureMatch(reference, {"bn": [[0, 1], [2, 3]]}).attached(model.eval()) as session, torch.no_grad():
            session.targets(x)
            model(x)
            return float(session.loss())

    plain, featured = (_distilled(student, reference, images, MERGES, w) for w in (0.0, 1.0))
    assert error(featured) < 0.2 * min(error(plain), error(student))


def test_with_nothing_merged_the_feature_term_leaves_distillation_as_it_was(one_thread):
    student, reference, images = _near_duplicates()
    plain, featured = (_distilled(student, reference, images, None, w) for w in (0.0, 1.0))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), featured.state_dict().values()))


def test_a_compressed_resnet_has_a_feature_target_at_every_batchnorm_after_a_merged_conv(one_thread):
    from achroma.repair.steps import _feature_match

    torch.manual_seed(0)
    color = create_model("resnet-cifar-20").eval()
    comp = Compressor(CompressConfig(seed=0, progress=False), Budget(macs=0.5, params=0.5)).fit(
        color, "cifar", random_images(100, seed=3))
    merges = refit_merges([r.summary() for r in comp.results_])
    job = RepairJob(random_images(8, seed=4), RepairConfig(distill_features=1.0), 0, "cpu", "gray", "none",
                    color, None, "cifar", comp.folded_, merges)
    match = _feature_match(comp.model_, job)
    bns = [n for n, m in comp.model_.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert sorted(match.layers) == sorted(set(bns) - {"bn1"})  # all but the stem's, the fold's border conv's
    for path, members in match.layers.items():
        assert len(members) == comp.model_.get_submodule(path).num_features
        assert sorted(i for m in members for i in m) == list(range(comp.folded_.get_submodule(path).num_features))
