"""The centripetal repair: merged clusters pulled together inside the uncompressed model, then merged."""
from __future__ import annotations

import copy

import pytest
import torch

from synthetic import random_images

from achroma.models import create_model
from achroma.pipeline import Budget, CompressConfig, Compressor
from achroma.pipeline.merging import refit_merges
from achroma.repair import ClusterTie, RepairConfig, RepairJob, run_repair

FAMILIES = ["resnet-cifar-20", "seed-densenet-tiny", "tv:mobilenet_v2"]


def _compressed(name: str, selection: str = "weights") -> tuple[Compressor, dict, torch.nn.Module]:
    torch.manual_seed(0)
    color = create_model(name).eval()
    comp = Compressor(CompressConfig(seed=0, progress=False, selection=selection),
                      Budget(macs=0.5)).fit(color, "cifar", random_images(20, seed=1))
    return comp, refit_merges([r.summary() for r in comp.results_]), color


def _spread(tie: ClusterTie) -> float:
    """The members' summed squared distance to their clusters' means, over every tied tensor."""
    total = 0.0
    for t in tie.tied:
        picked = t.tensor.detach().index_select(0, t.slots).double()
        means = torch.zeros((len(t.sizes),) + picked.shape[1:], dtype=torch.float64)
        means.index_add_(0, t.segment, picked)
        means /= t.sizes.double().view((-1,) + (1,) * (picked.ndim - 1))
        total += float(((picked - means.index_select(0, t.segment)) ** 2).sum())
    return total


@pytest.mark.parametrize("name", FAMILIES)
def test_a_tied_model_merges_exactly_into_the_merged_shapes(name, one_thread):
    comp, merges, _ = _compressed(name)
    tie = ClusterTie(copy.deepcopy(comp.folded_), merges, torch.zeros(1, 1, 32, 32))
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(tie.model.eval()(x), comp.folded_(x), atol=1e-5)  # made ready for surgery: exact
        tie.pull(1.0)
        tied = tie.model(x)
        merged = tie.merge().eval()
        scale = float(tied.abs().max())  # torchvision's untrained mobilenet_v2 gives logits of ~1e-10
        assert float((merged(x) - tied).abs().max()) <= 1e-4 * scale
        assert float((comp.folded_(x) - tied).abs().max()) > 1e-3 * scale  # the tie did change the model
    target = copy.deepcopy(comp.model_)
    target.load_state_dict(merged.state_dict())  # the merged model's shapes, entry for entry


def test_the_schedule_leaves_the_share_of_the_distance_it_names(one_thread):
    comp, merges, _ = _compressed("resnet-cifar-20")
    tie = ClusterTie(copy.deepcopy(comp.folded_), merges, torch.zeros(1, 1, 32, 32), until=0.5)
    start = _spread(tie)
    assert start > 0
    tie.step(0.0)
    assert _spread(tie) == pytest.approx(start, rel=1e-6)
    tie.step(0.25)
    assert _spread(tie) == pytest.approx(0.25 * start, rel=1e-4)  # half the distance: a quarter of its square
    tie.step(0.375)
    assert _spread(tie) == pytest.approx(0.0625 * start, rel=1e-4)
    tie.step(0.5)
    assert _spread(tie) < 1e-10 * start
    with pytest.raises(ValueError, match="until"):
        ClusterTie(copy.deepcopy(comp.folded_), merges, torch.zeros(1, 1, 32, 32), until=0.0)


def test_centripetal_trains_the_merged_shapes_and_is_distill_with_nothing_merged(one_thread):
    comp, merges, color = _compressed("resnet-cifar-20")
    data = random_images(24, seed=4)
    config = RepairConfig(batch_size=8)
    job = RepairJob(data, config, 0, "cpu", "gray", "none", teacher=color, teacher_normalize="cifar",
                    reference=comp.folded_, merges=merges)
    repaired = run_repair(comp.model_, "centripetal", job)
    assert {k: v.shape for k, v in repaired.state_dict().items()} == \
           {k: v.shape for k, v in comp.model_.state_dict().items()}
    assert not torch.equal(repaired.linear.weight, comp.model_.linear.weight)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(repaired(x)).all()
    plain = RepairJob(data, config, 0, "cpu", "gray", "none", teacher=color, teacher_normalize="cifar",
                      reference=comp.folded_)
    a, b = run_repair(comp.folded_, "centripetal", plain), run_repair(comp.folded_, "distill", plain)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_centripetal_refuses_a_pruned_selection_and_a_feature_term(one_thread):
    comp, merges, color = _compressed("resnet-cifar-20", selection="l1")
    job = RepairJob(random_images(8, seed=4), RepairConfig(batch_size=8), 0, "cpu", "gray", "none", teacher=color,
                    teacher_normalize="cifar", reference=comp.folded_, merges=merges)
    with pytest.raises(ValueError, match="pruned"):
        run_repair(comp.model_, "centripetal", job)
    with pytest.raises(ValueError, match="feature"):
        run_repair(comp.model_, "centripetal", RepairJob(job.images, RepairConfig(distill_features=1.0), 0, "cpu",
                                                         "gray", "none", teacher=color, teacher_normalize="cifar",
                                                         reference=comp.folded_, merges=merges))
    with pytest.raises(ValueError, match="centripetal_until"):
        RepairConfig(centripetal_until=1.5)


def test_compress_flag_reaches_the_repair_config():
    from achroma.cli import build_parser
    from achroma.cli.compress import _default_repair, config_from_args

    def config(*flags):
        args = build_parser().parse_args(["compress", "--weights", "w.safetensors", "--dataset", "cifar10",
                                          "--target-macs", "0.5", "--out", "o", *flags])
        _default_repair(args)
        return config_from_args(args, None, ["centripetal"]).repair_config

    assert config("--centripetal-until", "0.3").centripetal_until == 0.3
    assert config().centripetal_until == RepairConfig().centripetal_until
