"""Least-squares refit of the layers that read merged channels."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from achroma.data import ImageDataset
from achroma.fold import fold_to_gray
from achroma.models import create_model
from achroma.pipeline import RepairConfig, check_repairs, repair_model
from achroma.repair import changed_consumers, ls_refit
from achroma.surgery import merge_channels

torch.set_num_threads(1)


def _gray_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet-cifar-20").double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return fold_to_gray(model, "cifar")[0]


def _batches(n: int = 64, seed: int = 0):
    x = torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return [(x[i: i + 32], torch.zeros(32, dtype=torch.long)) for i in range(0, n, 32)]


def test_refit_with_nothing_merged_returns_the_same_weights():
    gray = _gray_resnet()
    model = copy.deepcopy(gray)
    layers = ["layer1.0.conv2", "layer2.1.conv1", "linear"]
    report = ls_refit(model, gray, _batches(256), layers=layers, ridge=1e-10)
    for path in layers[:2]:  # every input of a conv's patches varies: its weights are identifiable
        old, new = gray.get_submodule(path).weight, model.get_submodule(path).weight
        assert (new - old).abs().max() <= 1e-5 * old.abs().max()
    # the linear head reads pooled features, some of them always 0 at random init (their weights do
    # not matter): its outputs are what must not change
    x = _batches(32, seed=5)[0][0]
    with torch.no_grad():
        assert (model(x) - gray(x)).abs().max() <= 1e-6 * gray(x).abs().max()
    assert max(report.error_before) < 1e-6 and max(report.error_after) < 1e-6
    assert changed_consumers(model, gray) == []


def test_refit_brings_the_merged_model_closer_to_the_uncompressed_one():
    gray = _gray_resnet()
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    merged = merge_channels(gray, "layer1.0.conv1", np.arange(16) // 2, x)
    merged = merge_channels(merged, "layer2.1.conv1", np.arange(32) // 4, x)
    assert changed_consumers(merged, gray) == ["layer1.0.conv2", "layer2.1.conv2"]
    test = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with torch.no_grad():
        before = (merged(test) - gray(test)).norm()
    report = ls_refit(merged, gray, _batches(128))
    with torch.no_grad():
        after = (merged(test) - gray(test)).norm()
    assert all(a < b for a, b in zip(report.error_after, report.error_before))
    assert after < 0.7 * before


def test_ls_refit_repair_is_a_no_op_on_the_uncompressed_model_and_sequences_run_in_order():
    gray = _gray_resnet().float()
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    data = ImageDataset(images, torch.arange(40) % 10, [str(i) for i in range(10)], "toy", "train")
    same = repair_model(gray, "ls-refit", data, RepairConfig(refit_images=40), reference=gray)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), gray.state_dict().values()))
    assert check_repairs("ls-refit+bn-stats,distill") == ["ls-refit+bn-stats", "distill"]
    with pytest.raises(ValueError, match="unknown repair 'refit'"):
        check_repairs("refit+distill")
    with pytest.raises(ValueError, match="reference"):
        repair_model(gray, "ls-refit", data, RepairConfig())


def _halve_every_group(gray):
    """Every mergeable group but the first stream merged to half, channel pairs (2i, 2i+1); its merges."""
    from achroma.surgery.groups import channel_groups

    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    merged, merges = gray, {}
    for g in channel_groups(gray, x):
        if g.refused is None and g.root != "conv1":
            labels = np.arange(g.channels) // 2
            merged = merge_channels(merged, g.root, labels, x)
            merges[g.root] = (labels.tolist(), list(range(0, g.channels, 2)))
    return merged, merges


def test_producer_refit_of_exact_duplicates_changes_nothing():
    """Each pair made exact duplicates before a whole-network merge: the merge is exact, so refitting the
    producers to the members' mean BN output must leave the weights' function, hence the logits, alone."""
    from channel_copies import copy_channels

    from achroma.surgery import trace_channel_uses
    from achroma.surgery.graph import prepare_for_surgery
    from achroma.surgery.groups import channel_groups

    gray = prepare_for_surgery(_gray_resnet())  # shortcuts as channel maps, so their rows can be copied
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    for g in channel_groups(gray, x):
        if g.refused is None and g.root != "conv1":
            copy_channels(gray, trace_channel_uses(gray, g.root, x), [(i, i + 1) for i in range(0, g.channels, 2)])
    merged, merges = _halve_every_group(gray)
    test = _batches(32, seed=5)[0][0]
    with torch.no_grad():
        assert (merged(test) - gray(test)).abs().max() <= 1e-9 * gray(test).abs().max()
    report = ls_refit(merged, gray, _batches(256), merges=merges, ridge=1e-10)
    assert "layer2.0.conv1" in report.layers and "layer3.2.conv2" in report.layers  # producers were refit
    with torch.no_grad():
        assert (merged(test) - gray(test)).abs().max() <= 1e-4 * gray(test).abs().max()


def test_producer_refit_reaches_layers_that_both_read_and_write_merged_channels():
    gray = _gray_resnet()
    merged, merges = _halve_every_group(gray)
    consumers_only = ls_refit(copy.deepcopy(merged), gray, _batches(64))
    assert "layer2.0.conv1" not in consumers_only.layers  # reads and writes merged channels
    report = ls_refit(merged, gray, _batches(64), merges=merges)
    assert set(consumers_only.layers) < set(report.layers) and "layer2.0.conv1" in report.layers
    assert "conv1" not in report.layers  # the fold's border conv, and an unmerged stream, are left alone
    # the merge already gives a producer with unchanged inputs its target (the members' mean): ridge only
    assert all(a <= b + 1e-3 for a, b in zip(report.error_after, report.error_before))
    assert sum(report.error_after) < 0.5 * sum(report.error_before)


def _prune_dead(gray: torch.nn.Module, layer: str, consumer: str, dead: list[int]):
    """`gray` with the consumer slices of `dead` channels zeroed, and that model pruned of them."""
    from achroma.surgery.prune import prune_channels

    with torch.no_grad():
        gray.get_submodule(consumer).weight[:, dead] = 0
    n = gray.get_submodule(layer).out_channels
    keep = [c for c in range(n) if c not in dead]
    pruned = prune_channels(gray, layer, keep, torch.rand(1, 1, 32, 32, dtype=torch.float64))
    return pruned, keep


@pytest.mark.parametrize("method", ["l1", "fields"])
def test_refit_after_pruning_dead_channels_changes_nothing(method):
    """A pruning that removes channels nobody reads is exact; the refit must leave it so. Each kept
    channel's target is its own reference output (not the mean of channels removed beside it):
    refit_merges marks pruned layers, and old summaries of 'l1' count as pruned."""
    from achroma.pipeline.merging import refit_merges
    from achroma.surgery.prune import pruning_clustering

    gray = _gray_resnet()
    pruned, keep = _prune_dead(gray, "layer1.0.conv1", "layer1.0.conv2", [1, 4, 5, 9, 12])
    c = pruning_clustering(keep, 16, layer="layer1.0.conv1")
    summary = {"layer": "layer1.0.conv1", "method": method, "labels": c.labels.tolist(),
               "representatives": list(c.representatives)}
    if method != "l1":
        summary["pruned"] = True
    merges = refit_merges([summary])
    assert merges["layer1.0.conv1"][0].count(-1) == 5
    test = _batches(32, seed=5)[0][0]
    before = copy.deepcopy(pruned)
    ls_refit(pruned, gray, _batches(256), merges=merges, ridge=1e-10)
    with torch.no_grad():
        assert (pruned(test) - gray(test)).abs().max() <= 1e-5 * gray(test).abs().max()
    # as averaging targets (every removed channel joined to the first kept one), the same refit moves it
    wrong = copy.deepcopy(before)
    ls_refit(wrong, gray, _batches(256), merges={"layer1.0.conv1": (c.labels.tolist(), list(c.representatives))},
             ridge=1e-10)
    with torch.no_grad():
        assert (wrong(test) - gray(test)).abs().max() > 1e-3 * gray(test).abs().max()
