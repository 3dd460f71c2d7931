"""Grouped pointwise convolutions with interleaving (issue 10): layers, counts, models.

Fast: tiny tensors only (the largest is one forward/backward of kdensenet-bc-100 on 2 images of 16x16).
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from achroma.io import load_checkpoint, save_checkpoint
from achroma.layers import (
    ChannelInterleave,
    GroupedPointwiseBlock,
    GroupedPointwiseConv,
    block_plans,
    grouped_conv_params,
    grouped_pointwise_block_params,
    interleave_permutation,
    interleave_permutation_from_step,
    inverse_permutation,
    pointwise_params,
    seed_group_count,
    split_sizes,
)
from achroma.models import create_model, list_models

NEW_MODELS = ["kdensenet-bc-100", "densenet-bc-40", "kdensenet-bc-40", "kseed-densenet", "kseed-densenet-tiny"]


def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def n_bn_stats(model: nn.Module) -> int:
    return sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))


def seed_interleave(x: torch.Tensor, step: int) -> torch.Tensor:
    """The seed's InterleaveChannels(step) written as it is: concatenated strided slices."""
    return torch.cat([x[:, s::step] for s in range(step)], dim=1)


# ---- group counts and closed forms --------------------------------------------------------------

@pytest.mark.parametrize("cin,cout,min_ch,groups", [
    (24, 48, 12, 2), (36, 48, 12, 3), (48, 48, 12, 4), (60, 48, 12, 4), (84, 48, 12, 6), (216, 108, 12, 18),
    (300, 150, 12, 25), (252, 18, 16, 9), (72, 24, 16, 4), (11, 48, 12, 1), (37, 48, 12, 1), (37, 37, 4, 1),
])
def test_seed_group_count_is_the_largest_common_divisor_within_the_minimum_group_width(cin, cout, min_ch, groups):
    assert seed_group_count(cin, cout, min_ch) == groups


@pytest.mark.parametrize("cin,cout,min_ch,expected", [
    # per-layer counts read off the seed's Keras summary of kDenseNet-BC L100 D6_12ch (first conv + mixing conv)
    (24, 48, 12, 576), (36, 48, 12, 576), (48, 48, 12, 576 + 576), (60, 48, 12, 720 + 576), (72, 48, 12, 576 + 384),
    (84, 48, 12, 672 + 384), (96, 48, 12, 576 + 288), (216, 108, 12, 1296 + 648), (300, 150, 12, 1800 + 900),
])
def test_layer_counts_match_the_seed_keras_summary(cin, cout, min_ch, expected):
    block = GroupedPointwiseBlock(cin, cout, min_ch, act_layer="silu")
    assert n_trainable(block) == pointwise_params(cin, cout, min_ch) == expected


@pytest.mark.parametrize("cin,cout,groups", [(48, 48, 4), (37, 20, 3), (20, 37, 3), (13, 7, 7), (64, 65, 6), (5, 9, 1)])
@pytest.mark.parametrize("bias", [False, True])
def test_grouped_conv_count_closed_form_equals_the_module_and_the_sum_over_groups(cin, cout, groups, bias):
    conv = GroupedPointwiseConv(cin, cout, groups, bias=bias)
    by_groups = sum(i * o for i, o in zip(split_sizes(cin, groups), split_sizes(cout, groups)))
    assert grouped_conv_params(cin, cout, groups, bias) == n_trainable(conv) == by_groups + (cout if bias else 0)
    assert conv.groups == groups and sum(conv.in_splits) == cin and sum(conv.out_splits) == cout
    assert len(conv.convs) <= 3


@pytest.mark.parametrize("cin,cout,groups,mix", [(48, 48, 4, None), (24, 48, 2, None), (37, 21, 4, None),
                                                 (37, 21, 4, False), (21, 37, 4, True), (30, 30, 1, None)])
@pytest.mark.parametrize("norm", [False, True])
def test_block_count_closed_form(cin, cout, groups, mix, norm):
    block = GroupedPointwiseBlock(cin, cout, groups=groups, mix=mix, norm_layer=nn.BatchNorm2d if norm else None)
    assert n_trainable(block) == grouped_pointwise_block_params(cin, cout, groups, mix=mix, norm=norm)
    seed_mix = cin >= cout if mix is None else mix
    assert (block.conv2 is not None) == (seed_mix and groups > 1)


# ---- whole models against closed forms ---------------------------------------------------------

def densenet_bc_closed_form(depth, pointwise, *, growth=12, width=4, compression=0.5, in_chans=3, classes=10,
                            stem_bias=False, transition=None):
    """(trainable, BN statistics) of a DenseNet-BC from channel arithmetic; `pointwise(in, out)` counts a 1x1."""
    transition = transition or pointwise
    n, inner = (depth - 4) // 6, width * growth
    c = 2 * growth
    params, bn = 9 * in_chans * c + (c if stem_bias else 0), 0
    for stage in range(3):
        for _ in range(n):
            params += 2 * c + pointwise(c, inner) + 2 * inner + 9 * inner * growth
            bn += 2 * c + 2 * inner
            c += growth
        if stage < 2:
            out = int(c * compression)
            params, bn, c = params + 2 * c + transition(c, out), bn + 2 * c, out
    return params + 2 * c + c * classes + classes, bn + 2 * c


def dense(cin, cout):
    return cin * cout


def grouped(min_ch, rule="seed"):
    return lambda cin, cout: pointwise_params(cin, cout, min_ch, rule=rule)


@pytest.mark.parametrize("name,kwargs,pointwise,stem_bias,expected", [
    ("densenet-bc-100", {}, dense, False, (769_162, 23_988)),
    ("densenet-bc-40", {}, dense, False, None),
    # the seed's Keras summaries (JP33B25): 349,918 trainable + 23,988 non-trainable = 373,906 (D6_12ch) and
    # 384,136 + 23,988 = 408,124 (D6_24ch); its stem conv has a bias
    ("kdensenet-bc-100", {}, grouped(12), True, (349_918, 23_988)),
    ("kdensenet-bc-100", {"min_channels_per_group": 24}, grouped(24), True, (384_136, 23_988)),
    ("kdensenet-bc-40", {}, grouped(12), True, None),
    ("kdensenet-bc-40", {"group_rule": "uneven", "min_channels_per_group": 16}, grouped(16, "uneven"), True, None),
])
def test_densenet_bc_parameter_counts_equal_the_closed_form(name, kwargs, pointwise, stem_bias, expected):
    model = create_model(name, **kwargs)
    depth = int(name.rsplit("-", 1)[1])
    counts = densenet_bc_closed_form(depth, pointwise, stem_bias=stem_bias)
    assert (n_trainable(model), n_bn_stats(model)) == counts
    if expected is not None:
        assert counts == expected


def test_grouped_densenet_is_smaller_than_its_dense_partner_only_in_its_pointwise_convs():
    for depth in (40, 100):
        dense_model, k_model = create_model(f"densenet-bc-{depth}"), create_model(f"kdensenet-bc-{depth}")
        saved = sum(m.weight.numel() for m in dense_model.modules() if isinstance(m, nn.Conv2d)
                    and m.kernel_size == (1, 1)) - sum(n_trainable(m) for m in k_model.modules()
                                                         if isinstance(m, GroupedPointwiseBlock))
        assert saved > 0
        assert n_trainable(dense_model) - n_trainable(k_model) == saved - 24  # the seed's stem bias: 24 filters


def seed_densenet_closed_form(transition, *, stem=36, growth=18, blocks=(12, 12, 12, 12), trans=18, in_chans=3,
                              classes=10):
    c = stem
    params, bn = 9 * in_chans * stem, 0
    for i, n in enumerate(blocks):
        for _ in range(n):
            params, bn, c = params + 2 * c + 9 * c * growth, bn + 2 * c, c + growth
        if i < len(blocks) - 1:
            params, bn, c = params + 2 * c + transition(c, trans), bn + 2 * c, trans
    return params + 2 * c + 4 * c * classes + classes, bn + 2 * c


@pytest.mark.parametrize("name,transition,tiny", [
    ("seed-densenet", dense, False), ("kseed-densenet", grouped(16), False),
    ("seed-densenet-tiny", dense, True), ("kseed-densenet-tiny", grouped(16), True),
])
def test_seed_densenet_parameter_counts_equal_the_closed_form(name, transition, tiny):
    config = dict(stem=24, growth=12, blocks=(4, 4, 4), trans=24) if tiny else {}
    model = create_model(name)
    assert (n_trainable(model), n_bn_stats(model)) == seed_densenet_closed_form(transition, **config)
    if name == "seed-densenet":  # the closed form itself, against the notebook's Keras summary
        assert n_trainable(model) == 981_658 and n_bn_stats(model) == 13_572


def test_kdensenet_places_groups_mixing_and_interleaving_as_the_seed():
    model = create_model("kdensenet-bc-100")
    plans = {path: plan for path, *plan in block_plans(model)}
    # expanding bottlenecks (in < 48) have no mixing conv; from 48 inputs on they do
    assert plans["features.0.0.conv1"] == [24, 48, 2, False]
    assert plans["features.0.1.conv1"] == [36, 48, 3, False]
    assert plans["features.0.2.conv1"] == [48, 48, 4, True]
    assert plans["features.1.conv"] == [216, 108, 18, True]
    assert plans["features.3.conv"] == [300, 150, 25, True]
    assert len(plans) == 3 * 16 + 2
    # the transitions interleave their input with step = growth rate, before their BN
    for index, channels in ((1, 216), (3, 300)):
        transition = model.features[index]
        assert transition.interleave.perm.tolist() == interleave_permutation_from_step(channels, 12)
    # every grouped block interleaves its first conv's output with step = output channels per group
    block = model.features[1].conv
    assert block.interleave.perm.tolist() == interleave_permutation_from_step(108, 108 // 18)
    # the dense partner has no interleaving anywhere
    assert not any(isinstance(m, ChannelInterleave) for m in create_model("densenet-bc-100").modules())


def test_kdensenet_layers_use_the_seeds_activation_placement():
    """Seed: BN -> grouped 1x1 (activation inside) -> BN -> 3x3 -> ReLU; transition: interleave -> BN -> 1x1 -> pool."""
    torch.manual_seed(0)
    model = create_model("kdensenet-bc-40").eval()
    layer, transition = model.features[0][3], model.features[1]
    x = torch.randn(2, layer.norm1.num_features, 8, 8)
    with torch.no_grad():
        new = F.relu(layer.conv2(layer.norm2(layer.conv1(layer.norm1(x)))))
        assert torch.allclose(layer(x), torch.cat([x, new], 1), atol=1e-6)
        x = torch.randn(2, transition.norm.num_features, 8, 8)
        expected = F.avg_pool2d(transition.conv(transition.norm(seed_interleave(x, 12))), 2)
        assert torch.allclose(transition(x), expected, atol=1e-6)
    assert isinstance(model.head_act, nn.SiLU)
    assert isinstance(create_model("kdensenet-bc-40", activation="relu").head_act, nn.ReLU)


# ---- interleaving ------------------------------------------------------------------------------

@pytest.mark.parametrize("channels,step", [(48, 24), (108, 6), (216, 12), (300, 12), (10, 4), (37, 5), (7, 1)])
def test_interleave_is_the_seeds_and_a_permutation(channels, step):
    torch.manual_seed(0)
    layer = ChannelInterleave.from_step(channels, step)
    x = torch.randn(2, channels, 3, 3)
    y = layer(x)
    assert torch.equal(y, seed_interleave(x, max(step, 1)))
    perm = layer.perm.tolist()
    assert sorted(perm) == list(range(channels))  # every channel kept, none twice
    assert torch.equal(y.index_select(1, layer.inverse()), x)  # invertible
    assert torch.equal(layer.inverse(), torch.tensor(inverse_permutation(perm)))
    assert torch.equal(torch.sort(y.flatten(2).sum(2), dim=1).values, torch.sort(x.flatten(2).sum(2), dim=1).values)


def test_interleave_sends_each_group_of_the_next_conv_a_channel_from_every_group():
    sizes = split_sizes(26, 4)  # uneven: 7, 7, 6, 6
    perm = interleave_permutation(sizes)
    owner = [g for g, size in enumerate(sizes) for _ in range(size)]
    start = 0
    for size in split_sizes(26, 4):  # the next grouped conv's input groups, consecutive positions
        assert {owner[p] for p in perm[start:start + size]} == set(range(4))
        start += size
    with pytest.raises(ValueError):
        inverse_permutation([0, 0, 1])


# ---- equivalences ------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [False, True])
def test_one_group_is_the_dense_pointwise_conv(bias):
    torch.manual_seed(0)
    ref = nn.Conv2d(19, 23, 1, bias=bias)
    conv = GroupedPointwiseConv(19, 23, groups=1, bias=bias)
    conv.load_state_dict({f"convs.0.{k}": v for k, v in ref.state_dict().items()})
    x = torch.randn(3, 19, 5, 5)
    assert torch.allclose(conv(x), ref(x), atol=1e-6)
    assert torch.equal(conv.dense_weight(), ref.weight[:, :, 0, 0])
    block = GroupedPointwiseBlock(19, 23, groups=1, act_layer="relu", bias=bias)
    block.conv1.load_state_dict(conv.state_dict())
    assert block.conv2 is None and block.interleave is None
    assert torch.allclose(block(x), F.relu(ref(x)), atol=1e-6)
    # the seed's rule falls back to one group (a dense conv) when no common divisor qualifies
    assert GroupedPointwiseBlock(37, 48, 12).groups == 1


@pytest.mark.parametrize("cin,cout,groups", [(48, 48, 4), (37, 21, 4), (21, 37, 5), (9, 9, 9)])
def test_grouped_conv_is_the_block_diagonal_dense_conv(cin, cout, groups):
    torch.manual_seed(0)
    conv = GroupedPointwiseConv(cin, cout, groups, bias=True)
    x = torch.randn(2, cin, 4, 4)
    weight = conv.dense_weight()
    assert int((weight != 0).sum()) == grouped_conv_params(cin, cout, groups)  # nothing across groups
    assert torch.allclose(conv(x), F.conv2d(x, weight[:, :, None, None], conv.dense_bias()), atol=1e-6)


def test_block_forward_is_the_seeds_layer():
    """conv1 -> act -> interleave (step = outputs per group) -> conv2 -> act, plus the act1 output."""
    torch.manual_seed(0)
    block = GroupedPointwiseBlock(60, 48, 12, act_layer="silu")
    assert block.groups == 4 and block.conv2 is not None
    x = torch.randn(2, 60, 4, 4)
    y = F.silu(F.conv2d(x, block.conv1.convs[0].weight, groups=4))
    z = F.silu(F.conv2d(seed_interleave(y, 12), block.conv2.convs[0].weight, groups=4)) + y
    assert torch.allclose(block(x), z, atol=1e-6)
    expand = GroupedPointwiseBlock(24, 48, 12, act_layer="silu")  # in < out: no mixing conv, output interleaved
    x = torch.randn(2, 24, 4, 4)
    y = F.silu(F.conv2d(x, expand.conv1.convs[0].weight, groups=2))
    assert torch.allclose(expand(x), seed_interleave(y, 24), atol=1e-6)


def test_odd_channel_counts_the_group_count_does_not_divide():
    torch.manual_seed(0)
    block = GroupedPointwiseBlock(37, 21, groups=4, act_layer="relu")
    assert block.conv1.in_splits == [10, 9, 9, 9] and block.conv1.out_splits == [6, 5, 5, 5]
    x = torch.randn(2, 37, 5, 5, requires_grad=True)
    out = block(x)
    assert out.shape == (2, 21, 5, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in block.parameters())
    assert n_trainable(block) == grouped_pointwise_block_params(37, 21, 4)
    uneven = GroupedPointwiseBlock(37, 21, 12, rule="uneven")  # 37 // 12 = 3 groups of 13, 12, 12
    assert uneven.groups == 3 and uneven.conv1.in_splits == [13, 12, 12]
    assert n_trainable(uneven) == pointwise_params(37, 21, 12, rule="uneven")
    # a whole model of odd widths: growth 7, so every block input and transition is odd-sized somewhere
    model = create_model("kdensenet-bc-40", growth=7, bottleneck=28, group_rule="uneven")
    assert any(g > 1 and (i % g or o % g) for _, i, o, g, _ in block_plans(model))
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert n_trainable(model) == densenet_bc_closed_form(40, grouped(12, "uneven"), growth=7, stem_bias=True)[0]


def test_layers_take_device_and_dtype():
    block = GroupedPointwiseBlock(37, 21, groups=4, norm_layer=nn.BatchNorm2d, dtype=torch.float64, device="meta")
    assert {p.dtype for p in block.parameters()} == {torch.float64}
    assert {p.device.type for p in block.parameters()} == {"meta"} and block.interleave.perm.device.type == "meta"


# ---- the registry, checkpoints, training --------------------------------------------------------

@pytest.mark.parametrize("name", NEW_MODELS)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_create_model_builds_every_new_name(name, in_chans):
    assert name in list_models()
    model = create_model(name, in_chans=in_chans, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_chans, 16, 16)).shape == (2, 5)
    assert model.achroma_arch == {"name": name, "in_chans": in_chans, "num_classes": 5}


@pytest.mark.parametrize("name,kwargs", [("kdensenet-bc-40", {}), ("kseed-densenet-tiny", {"in_chans": 1}),
                                         ("kdensenet-bc-40", {"min_channels_per_group": 16, "activation": "relu",
                                                              "group_rule": "uneven", "num_classes": 4})])
def test_grouped_model_saves_and_reloads_with_identical_outputs(tmp_path, name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    with torch.no_grad():  # non-trivial BN statistics and weights, so a bad load would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    save_checkpoint(tmp_path / name, model, {"note": "test"})
    loaded, meta = load_checkpoint(tmp_path / name)
    loaded.eval()
    assert meta["arch"] == model.achroma_arch
    x = torch.randn(3, model.achroma_arch["in_chans"], 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert block_plans(loaded) == block_plans(model)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_forward_and_one_sgd_step_on_a_tiny_batch(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).train()
    grouped_convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert bool(grouped_convs) == name.startswith("k")
    before = [m.weight.detach().clone() for m in grouped_convs]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    loss = F.cross_entropy(model(x), y)
    reg = getattr(model, "regularization_loss", None)
    if reg is not None:
        loss = loss + reg()
    optimizer.zero_grad()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    optimizer.step()
    assert all(not torch.equal(b, m.weight) for b, m in zip(before, grouped_convs))


def test_kseed_regularization_covers_every_grouped_transition_conv():
    model = create_model("kseed-densenet-tiny")
    convs = [c for m in model.features if hasattr(m, "l1") for c in m.conv.modules() if isinstance(c, nn.Conv2d)]
    assert len(convs) == 4  # two transitions, each a grouped conv and its mixing conv
    expected = sum(0.01 * c.weight.abs().sum() for c in convs)
    assert torch.allclose(model.regularization_loss(), expected)


def test_model_pairs_keep_module_names_so_dense_and_grouped_line_up():
    names = {k for k, _ in create_model("densenet-bc-40").named_children()}
    assert names == {k for k, _ in create_model("kdensenet-bc-40").named_children()}
    pairs = itertools.zip_longest(create_model("densenet-bc-40").features, create_model("kdensenet-bc-40").features)
    assert all(type(a) is type(b) for a, b in pairs)
