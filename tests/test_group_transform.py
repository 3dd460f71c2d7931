"""The grouped pointwise transform for trained models (issue 10): exactness, counts, channel order,
checkpoints, the `group` command, and DDP / `train` with grouped models.

Tiny inputs throughout (16x16 or 32x32 images, a handful of them).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from achroma.cli import main
from achroma.data import BatchLoader
from achroma.grouping import (PermutedGroupedConv, apply_grouping, energy_order, find_pointwise_convs, kept_energy,
                              naive_order, plan_grouping)
from achroma.io import load_checkpoint, save_checkpoint
from achroma.layers import grouped_conv_params
from achroma.models import create_model
from achroma.report import count_macs
from achroma.training import classification_loss

from ddp_launch import run_ddp, tiny_batch

ASSETS = Path(__file__).resolve().parents[1] / "src" / "achroma" / "assets"
DEMO = ASSETS / "demo-model.safetensors"
DEMO_DATA = f"tar:{ASSETS / 'demo-cifar10-jpeg.tar.gz'}"


class StridedNet(nn.Module):
    """1x1 convs with a stride and a bias, between other layers (what a ResNet shortcut looks like)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.down = nn.Conv2d(32, 48, 1, stride=2, bias=True)
        self.bn = nn.BatchNorm2d(48)
        self.point = nn.Conv2d(48, 40, 1)
        self.head = nn.Linear(40, 5)

    def forward(self, x):
        x = self.point(F.relu(self.bn(self.down(F.relu(self.stem(x))))))
        return self.head(x.mean((2, 3)))


def demo_model() -> nn.Module:
    return load_checkpoint(DEMO)[0].eval()


def randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the layer ------------------------------------------------------------------------------------

@pytest.mark.parametrize("stride,bias", [(1, False), (2, True)])
def test_permuted_layer_with_one_group_equals_the_dense_conv(stride, bias):
    torch.manual_seed(0)
    dense = nn.Conv2d(20, 13, 1, stride=stride, bias=bias)
    layer = PermutedGroupedConv(20, 13, 1, bias=bias, stride=stride, in_perm=torch.randperm(20).tolist(),
                                out_perm=torch.randperm(13).tolist())
    layer.load_dense(dense.weight, dense.bias)
    x = torch.randn(2, 20, 7, 7)
    assert torch.allclose(layer(x), dense(x), atol=1e-6)
    assert torch.equal(layer.dense_weight(), dense.weight[:, :, 0, 0])


@pytest.mark.parametrize("cin,cout,groups", [(48, 24, 4), (37, 21, 4), (20, 36, 5)])
def test_permuted_grouped_layer_is_the_masked_dense_conv_in_the_original_order(cin, cout, groups):
    torch.manual_seed(0)
    dense = nn.Conv2d(cin, cout, 1, bias=True)
    layer = PermutedGroupedConv(cin, cout, groups, bias=True, in_perm=torch.randperm(cin).tolist(),
                                out_perm=torch.randperm(cout).tolist()).load_dense(dense.weight, dense.bias)
    masked = layer.dense_weight()
    kept = masked != 0
    assert int(kept.sum()) == grouped_conv_params(cin, cout, groups)
    assert torch.equal(masked[kept], dense.weight[:, :, 0, 0][kept])  # entries kept are the dense ones, in place
    x = torch.randn(2, cin, 3, 3)
    assert torch.allclose(layer(x), F.conv2d(x, masked[:, :, None, None], dense.bias), atol=1e-6)


# ---- the transform --------------------------------------------------------------------------------

def _one_group_cases():
    return [("demo", demo_model, 32), ("densenet-bc-40", lambda: create_model("densenet-bc-40").eval(), 16),
            ("tv:mobilenet_v2", lambda: create_model("tv:mobilenet_v2").eval(), 32),
            ("strided", lambda: StridedNet().eval(), 16)]


@pytest.mark.parametrize("name,build,size", _one_group_cases(), ids=[c[0] for c in _one_group_cases()])
def test_the_transform_with_one_group_changes_no_output(name, build, size):
    torch.manual_seed(0)
    model = randomize_bn(build())
    plans = plan_grouping(model, min_channels=16, groups=1, size=size)
    assert plans and all(p.groups == 1 for p in plans)
    grouped = apply_grouping(model, plans).eval()
    assert sum(isinstance(m, PermutedGroupedConv) for m in grouped.modules()) == len(plans)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(grouped(x), model(x), atol=1e-6, rtol=0)
    assert not any(isinstance(m, PermutedGroupedConv) for m in model.modules())  # the input is untouched


def test_candidates_come_from_the_forward_pass_not_from_names():
    model = create_model("tv:mobilenet_v2").eval()
    found = find_pointwise_convs(model, min_channels=16)
    # every found layer is a dense 1x1 conv with >= 32 inputs; depthwise and 3x3 convs are not
    modules = dict(model.named_modules())
    assert found and all(modules[c.layer].kernel_size == (1, 1) and modules[c.layer].groups == 1 for c in found)
    assert all(c.in_channels >= 32 for c in found)
    expected = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
                and m.groups == 1 and m.in_channels >= 32]
    assert sorted(c.layer for c in found) == sorted(expected)
    strided = find_pointwise_convs(StridedNet(), min_channels=16, size=16)
    assert [(c.layer, c.stride, c.bias, c.out_pixels) for c in strided] == [("down", 2, True, 64),
                                                                            ("point", 1, True, 64)]


@pytest.mark.parametrize("rule", ["seed", "uneven"])
def test_grouping_removes_exactly_the_closed_form_parameters_and_macs(rule):
    model = create_model("densenet-bc-40").eval()
    plans = plan_grouping(model, min_channels=16, rule=rule, size=16)
    assert plans and all(p.groups >= 2 for p in plans)
    grouped = apply_grouping(model, plans)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    removed = sum(p.in_channels * p.out_channels - grouped_conv_params(p.in_channels, p.out_channels, p.groups)
                  for p in plans)
    assert params(model) - params(grouped) == removed
    macs = sum(p.dense_macs - p.grouped_macs for p in plans)
    assert count_macs(model, (3, 16, 16)) - count_macs(grouped, (3, 16, 16)) == macs


# ---- the channel order ---------------------------------------------------------------------------

@pytest.mark.parametrize("out_ch,in_ch,groups", [(24, 72, 4), (37, 21, 4), (64, 64, 8), (16, 96, 2)])
def test_energy_order_keeps_at_least_the_naive_energy_on_random_and_structured_weights(out_ch, in_ch, groups):
    rng = np.random.default_rng(0)
    for trial in range(3):
        w = rng.standard_normal((out_ch, in_ch))
        if trial:  # structured: a block diagonal plus noise, channels shuffled
            naive = naive_order(np.ones((out_ch, in_ch)), groups)
            w = w * 0.2 + 3.0 * (naive.out_labels[:, None] == naive.in_labels[None, :])
            w = w[rng.permutation(out_ch)][:, rng.permutation(in_ch)]
        e = w * w
        best, plain = energy_order(e, groups), naive_order(e, groups)
        assert best.kept >= plain.kept - 1e-12
        assert best.kept == pytest.approx(kept_energy(e, best.out_labels, best.in_labels))
        assert np.bincount(best.out_labels).tolist() == np.bincount(plain.out_labels).tolist()  # balanced groups
        assert np.bincount(best.in_labels).tolist() == np.bincount(plain.in_labels).tolist()
        if trial:
            assert best.kept > plain.kept + 0.1


@pytest.mark.parametrize("out_ch,in_ch,groups", [(24, 72, 4), (48, 48, 6), (21, 37, 4)])
def test_energy_order_recovers_a_hidden_block_diagonal_and_the_transform_is_then_exact(out_ch, in_ch, groups):
    torch.manual_seed(0)
    blocks = naive_order(np.ones((out_ch, in_ch)), groups)
    mask = torch.as_tensor(blocks.out_labels[:, None] == blocks.in_labels[None, :])
    w = torch.randn(out_ch, in_ch) * mask
    w = w[torch.randperm(out_ch)][:, torch.randperm(in_ch)]
    order = energy_order(w.double().numpy() ** 2, groups)
    assert order.kept == pytest.approx(1.0, abs=1e-12)
    model = nn.Sequential(nn.Conv2d(3, in_ch, 3, padding=1), nn.Conv2d(in_ch, out_ch, 1, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(w[:, :, None, None])
    plans = plan_grouping(model, min_channels=2, groups=groups, size=8)
    assert [p.layer for p in plans] == ["1"] and plans[0].kept_energy == pytest.approx(1.0)
    assert plans[0].naive_kept_energy < 0.9
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(apply_grouping(model, plans)(x), model(x), atol=1e-5)


# ---- checkpoints ---------------------------------------------------------------------------------

def test_a_grouped_model_saves_reloads_and_gives_identical_outputs(tmp_path):
    model = demo_model()
    plans = plan_grouping(model, min_channels=16)
    grouped = apply_grouping(model, plans).eval()
    save_checkpoint(tmp_path / "grouped", grouped, {"mode": "color"})
    meta = json.loads((tmp_path / "grouped.json").read_text())
    assert [p["layer"] for p in meta["grouping"]] == [p.layer for p in plans]
    loaded, _ = load_checkpoint(tmp_path / "grouped")
    loaded.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), grouped(x))
    # a second transform of the reloaded model keeps the first one's plans in its checkpoint
    again = apply_grouping(loaded, plan_grouping(loaded, min_channels=16, groups=2))
    assert len(again.achroma_grouping) == len(plans)


def test_a_merged_then_grouped_model_saves_and_reloads(tmp_path):
    from achroma.surgery import prune_channels

    model = create_model("densenet-bc-40").eval()
    x = torch.randn(1, 3, 16, 16)
    pruned = prune_channels(model, "features.1.conv", list(range(0, 48, 2)), x)  # a transition: 48 -> 24 channels
    pruned.achroma_surgery = True
    grouped = apply_grouping(pruned, plan_grouping(pruned, min_channels=16, size=16)).eval()
    save_checkpoint(tmp_path / "both", grouped)
    loaded = load_checkpoint(tmp_path / "both")[0].eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), grouped(x))


# ---- the command ---------------------------------------------------------------------------------

def test_group_command_end_to_end_on_the_demo_model(tmp_path, capsys):
    out = tmp_path / "grouped"
    args = ["group", "--weights", str(DEMO), "--dataset", DEMO_DATA, "--test-limit", "3", "--calib-limit", "4",
            "--repair", "distill", "--batch-size", "8", "--threads", "1", "--quiet", "--out", str(out),
            "--display-name", "Demo CIFAR"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| dense | color | none |" in printed and "kept energy (naive order)" in printed
    assert "on Demo CIFAR" in printed and "demo-cifar10-jpeg.tar.gz\n" not in printed.split("## Layers")[0]
    report = json.loads((out / "report.json").read_text())
    assert [r["key"] for r in report["rows"]] == ["dense", "grouped", "grouped-naive", "grouped+distill"]
    assert report["totals"]["closed_form_matches"] and report["totals"]["layers"] == 2
    assert all(ly["kept_energy"] >= ly["naive_kept_energy"] for ly in report["layers"])
    model, meta = load_checkpoint(out / "model")
    assert meta["mode"] == "color" and len(meta["grouping"]) == 2
    assert sum(p.numel() for p in model.parameters()) == report["rows"][-1]["params"]
    # the model it wrote scores what the report says
    from achroma.data import load_dataset
    from achroma.training import evaluate

    test = load_dataset(DEMO_DATA, "test").stratified_subset(3, seed=0)
    acc = evaluate(model, test, mode="color", normalize=meta["normalization"], progress=False)["accuracy"]
    assert acc == pytest.approx(report["rows"][-1]["accuracy"])
    # never over the input, never silently over an output; nothing to group exits 2
    assert main(["group", "--weights", str(DEMO), "--out", str(ASSETS), "--quiet"]) == 2
    assert main(["group", "--weights", str(DEMO), "--out", str(out), "--quiet"]) == 2
    assert main(["group", "--weights", str(DEMO), "--min-channels", "64", "--out", str(tmp_path / "none")]) == 2
    assert "nothing to group" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_ls_refit_of_a_grouped_conv_is_each_groups_least_squares_solution():
    from achroma.repair import ls_refit_grouped

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1, bias=True)).eval()
    grouped = apply_grouping(dense, plan_grouping(dense, 4, size=8)).eval()
    layer = grouped[2]
    assert isinstance(layer, PermutedGroupedConv) and layer.groups == 2
    x = torch.randn(16, 3, 8, 8)
    report = ls_refit_grouped(grouped, dense, [(x, None)], ridge=1e-12)
    with torch.no_grad():
        feats = dense[1](dense[0](x)).permute(0, 2, 3, 1).reshape(-1, 8).double().numpy()
        target = (dense(x) - dense[2].bias.view(1, -1, 1, 1)).permute(0, 2, 3, 1).reshape(-1, 6).double().numpy()
    weight = layer.dense_weight().double().numpy()  # (out, in), original channel order
    for ins, outs in layer.group_channels():  # numpy's least squares, group by group
        solution, *_ = np.linalg.lstsq(feats[:, ins], target[:, outs], rcond=None)
        np.testing.assert_allclose(weight[np.ix_(outs, ins)], solution.T, atol=1e-5)
    assert report.layers == ["2"] and report.error_after[0] <= report.error_before[0]
    with torch.no_grad():  # the output moves toward the dense one
        assert (grouped(x) - dense(x)).norm() < (apply_grouping(dense, plan_grouping(dense, 4, size=8))(x)
                                                  - dense(x)).norm()


def test_group_command_refits_then_distills_with_a_row_for_each_step(tmp_path):
    out = tmp_path / "grouped"
    assert main(["group", "--weights", str(DEMO), "--dataset", DEMO_DATA, "--test-limit", "3", "--calib-limit", "4",
                 "--repair", "ls-refit+distill", "--refit-images", "20", "--batch-size", "8", "--threads", "1",
                 "--quiet", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    keys = [r["key"] for r in report["rows"]]
    assert keys == ["dense", "grouped", "grouped-naive", "grouped+ls-refit", "grouped+ls-refit+distill"]
    assert report["rows"][-1]["repair"] == "ls-refit+distill:1" and report["settings"]["refit_images"] == 20
    assert load_checkpoint(out / "model")[1]["grouping"]


# ---- training: the CLI's train and DDP -----------------------------------------------------------

def ddp_models() -> dict[str, nn.Module]:
    """kdensenet-bc-40 (grouped by construction) and densenet-bc-40 grouped by the transform."""
    torch.manual_seed(0)
    k = create_model("kdensenet-bc-40", num_classes=3)
    torch.manual_seed(0)
    dense = create_model("densenet-bc-40", num_classes=3)
    return {"kdensenet-bc-40": k, "grouped": apply_grouping(dense, plan_grouping(dense, 16, size=16))}


def test_ddp_accepts_grouped_models_and_matches_per_shard_gradients(tmp_path):
    ddp = run_ddp("grouped", tmp_path / "grads.pt")
    loader = BatchLoader(tiny_batch(), batch_size=8, normalize="cifar")
    x, y = next(iter(loader))
    for kind, model in ddp_models().items():  # BN on CPU normalizes each shard: accumulate over the shards
        total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for idx in (torch.arange(0, 8, 2), torch.arange(1, 8, 2)):
            model.zero_grad()
            classification_loss(model, x[idx], y[idx]).backward()
            for n, p in model.named_parameters():
                total[n] += p.grad / 2
        assert set(ddp[kind]) == set(total)
        for name, grad in total.items():
            torch.testing.assert_close(ddp[kind][name], grad, rtol=1e-4, atol=1e-6)


def test_train_command_trains_kdensenet_and_goes_on_from_a_grouped_checkpoint(tmp_path):
    from test_data import _write_tree

    _write_tree(tmp_path / "tree", classes=("a", "b", "c"), per_class=4, size=16)
    data = ["--dataset", f"folder:{tmp_path / 'tree'}", "--epochs", "1", "--batch-size", "4", "--device", "cpu"]
    assert main(["train", "--model", "kdensenet-bc-40", "--num-classes", "3", "--out", str(tmp_path / "k"),
                 *data]) == 0
    assert load_checkpoint(tmp_path / "k" / "model")[0].achroma_arch["name"] == "kdensenet-bc-40"
    dense = create_model("densenet-bc-40", num_classes=3)
    grouped = apply_grouping(dense, plan_grouping(dense, 16, size=16))
    save_checkpoint(tmp_path / "g" / "model", grouped, {"mode": "color", "normalization": "cifar"})
    assert main(["train", "--weights", str(tmp_path / "g" / "model.safetensors"), "--out", str(tmp_path / "g2"),
                 *data]) == 0
    trained, meta = load_checkpoint(tmp_path / "g2" / "model")
    assert meta["grouping"] and sum(isinstance(m, PermutedGroupedConv) for m in trained.modules()) == len(
        meta["grouping"])


@pytest.mark.parametrize("name", ["densenet-bc-40", "kdensenet-bc-40", "resnet-cifar-20"])
def test_reinitialize_draws_what_the_constructor_draws_with_the_same_seed(name):
    from achroma.surgery import reinitialize

    torch.manual_seed(3)
    fresh = create_model(name)
    trained = create_model(name)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
        for m in trained.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(1.0)
    reinitialize(trained, seed=3)
    for (key, a), b in zip(fresh.state_dict().items(), trained.state_dict().values()):
        assert torch.equal(a, b), key


def test_reinitialize_refuses_a_module_it_cannot_reset():
    from achroma.surgery import reinitialize

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(3))

    with pytest.raises(TypeError, match="reset_parameters"):
        reinitialize(nn.Sequential(nn.Conv2d(3, 3, 1), Scale()))


def test_train_reinit_keeps_a_grouped_architecture_and_draws_new_weights(tmp_path):
    from test_data import _write_tree

    _write_tree(tmp_path / "tree", classes=("a", "b", "c"), per_class=4, size=16)
    dense = create_model("densenet-bc-40", num_classes=3)
    grouped = apply_grouping(dense, plan_grouping(dense, 16, size=16))
    save_checkpoint(tmp_path / "g" / "model", grouped, {"mode": "color", "normalization": "cifar"})
    source = json.loads((tmp_path / "g" / "model.json").read_text())["grouping"]
    assert main(["train", "--weights", str(tmp_path / "g" / "model.safetensors"), "--out", str(tmp_path / "r"),
                 "--reinit", "--dataset", f"folder:{tmp_path / 'tree'}", "--epochs", "2", "--eval-every", "2",
                 "--test-limit", "2", "--batch-size", "4", "--lr", "0", "--weight-decay", "0", "--threads", "1",
                 "--device", "cpu"]) == 0
    trained, meta = load_checkpoint(tmp_path / "r" / "model")
    assert meta["grouping"] == source
    assert sum(p.numel() for p in trained.parameters()) == sum(p.numel() for p in grouped.parameters())
    # lr 0: the weights are the re-initialized ones, none of them the source's
    for (key, a), b in zip(grouped.state_dict().items(), trained.state_dict().values()):
        if key.endswith("weight") and a.dim() == 4:
            assert not torch.equal(a, b), key
    epochs = meta["training"]["epochs"]
    assert "test_accuracy" not in epochs[0] and "test_accuracy" in epochs[1]  # --eval-every 2


def test_train_reinit_needs_weights(tmp_path, capsys):
    assert main(["train", "--model", "resnet-cifar-20", "--reinit", "--dataset", "cifar10",
                 "--out", str(tmp_path)]) != 0
    assert "--reinit re-initializes the architecture of --weights" in capsys.readouterr().err
