"""Tests for achroma.fields: batched gradient ascent, layer lookup, the result file and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from tqdm import tqdm

import achroma.cli as cli
from achroma.clustering import Clustering
from achroma.data import get_normalization
from achroma.fields import (
    ReceptiveFields,
    compute_receptive_fields,
    conv_layer_names,
    first_conv_name,
    initial_images,
    input_channels,
    resolve_conv,
)
from achroma.fields.ascent import _climb, _Objective
from achroma.models import create_model

torch.set_num_threads(1)

DENSE_LAYER = "features.0.2.conv"  # the third layer of the first dense block


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return create_model("seed-densenet-tiny")


def _fields(model: nn.Module, layer: str, **kw) -> ReceptiveFields:
    kw.setdefault("steps", 8)
    kw.setdefault("normalization", "cifar")
    return compute_receptive_fields(model, layer, progress=False, **kw)


def test_batched_equals_one_filter_at_a_time(tiny):
    # float64 so that the comparison measures the method, not float32 summation order
    model = create_model("seed-densenet-tiny").double()
    model.load_state_dict(tiny.state_dict())
    batched = _fields(model, DENSE_LAYER, steps=15)
    single = np.concatenate([_fields(model, DENSE_LAYER, steps=15, filters=[i]).raw for i in range(batched.n_filters)])
    assert batched.raw.shape == (12, 3, 32, 32)
    np.testing.assert_allclose(batched.raw, single, rtol=0, atol=1e-5)
    # and in float32, to float32 accuracy relative to the 0..255 pixel scale
    batched32 = _fields(tiny, DENSE_LAYER, steps=15)
    single32 = np.concatenate([_fields(tiny, DENSE_LAYER, steps=15, filters=[i]).raw for i in range(12)])
    assert np.abs(batched32.raw - single32).max() / 255 < 1e-5


def test_chunked_batches_give_the_same_fields(tiny):
    whole = _fields(tiny, "stem")
    chunked = _fields(tiny, "stem", batch_size=5)
    np.testing.assert_array_equal(whole.raw, chunked.raw)


def test_deterministic_for_a_seed_and_different_across_seeds(tiny):
    a, b = _fields(tiny, DENSE_LAYER, seed=3), _fields(tiny, DENSE_LAYER, seed=3)
    np.testing.assert_array_equal(a.raw, b.raw)
    c = _fields(tiny, DENSE_LAYER, seed=4)
    assert not np.allclose(a.raw, c.raw)


def _one_run(model: nn.Module, layer: str, seed: int, restart: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) pixel images of restart `restart` alone, from its documented per-filter streams."""
    conv = resolve_conv(model, layer)
    x0 = torch.from_numpy(initial_images(seed, restart, range(conv.out_channels), 3, 32)).float()
    model.eval()
    x = _climb(_Objective(model, conv), x0, torch.arange(conv.out_channels), get_normalization("cifar"),
               steps, 0.5, tqdm(disable=True))
    return x0.numpy(), x.numpy()


def test_restarts_average_the_seeded_runs(tiny):
    single = _fields(tiny, DENSE_LAYER, seed=0, restarts=1)
    avg = _fields(tiny, DENSE_LAYER, seed=0, restarts=3)
    runs = [single.raw] + [_one_run(tiny, DENSE_LAYER, 0, r, 8)[1] for r in (1, 2)]
    np.testing.assert_allclose(_one_run(tiny, DENSE_LAYER, 0, 0, 8)[1], single.raw, rtol=0, atol=1e-4)
    np.testing.assert_allclose(avg.raw, np.mean(runs, axis=0), rtol=0, atol=1e-4)
    assert avg.params["restarts"] == 3


def test_fields_climb_and_are_deprocessed(tiny):
    rf = _fields(tiny, DENSE_LAYER, steps=20)
    assert rf.color.shape == (12, 32, 32, 3) and rf.gray.shape == (12, 32, 32)
    assert rf.color.min() >= 0 and rf.color.max() <= 1
    luma = rf.color @ np.array([0.2989, 0.5870, 0.1140])
    np.testing.assert_allclose(rf.gray, luma, atol=1e-6)
    # every filter's mean activation went up from the start image to its field
    norm = get_normalization("cifar")
    maps = {}
    handle = resolve_conv(tiny, DENSE_LAYER).register_forward_hook(lambda m, i, out: maps.update(out=out))
    start = torch.from_numpy(initial_images(0, 0, range(12), 3, 32)).float()
    with torch.no_grad():
        tiny.eval()(norm(start / 255))
        before = maps["out"][range(12), range(12)].mean(dim=(1, 2))
        tiny(norm(torch.from_numpy(rf.raw) / 255))
        after = maps["out"][range(12), range(12)].mean(dim=(1, 2))
    handle.remove()
    assert (after > before).all()


class _OpaqueConv(nn.Conv2d):
    """A Conv2d subclass with its own forward: the ascent must run it whole."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


def test_constant_layer_gradient_equals_running_the_layer(tiny):
    model = create_model("seed-densenet-tiny").double()
    model.load_state_dict(tiny.state_dict())
    fast = _fields(model, DENSE_LAYER, steps=15)
    conv = resolve_conv(model, DENSE_LAYER)
    conv.__class__ = _OpaqueConv
    assert not _Objective(model, conv).affine
    slow = _fields(model, DENSE_LAYER, steps=15)
    np.testing.assert_allclose(fast.raw, slow.raw, rtol=0, atol=1e-8)


def test_torchvision_resnet_layer_at_small_size():
    torch.manual_seed(0)
    model = create_model("tv:resnet18")
    rf = _fields(model, "layer1.0.conv1", steps=3, size=16, filters=range(8), normalization="imagenet")
    assert rf.raw.shape == (8, 3, 16, 16) and rf.layer == "layer1.0.conv1"
    assert first_conv_name(model) == "conv1"


def test_one_channel_model():
    torch.manual_seed(0)
    model = create_model("seed-densenet-tiny", in_chans=1)
    assert input_channels(model) == 1
    rf = _fields(model, "first", steps=5)
    assert rf.raw.shape == (24, 1, 32, 32) and rf.gray.shape == (24, 32, 32)
    np.testing.assert_allclose(rf.color[..., 0], rf.gray)
    np.testing.assert_allclose(rf.color[..., 2], rf.gray)


def test_first_is_forward_order_not_registration_order():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Conv2d(4, 2, 3)  # registered first, called second
            self.early = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.late(self.early(x))

    net = Net()
    assert conv_layer_names(net) == ["late", "early"]
    assert first_conv_name(net) == "early" and input_channels(net) == 1
    assert _fields(net, "first", steps=2).layer == "early"


def test_unknown_or_non_conv_layer_raises(tiny):
    with pytest.raises(ValueError, match="stem"):
        _fields(tiny, "no.such.layer")
    with pytest.raises(ValueError, match="not a Conv2d"):
        _fields(tiny, "head_norm")
    with pytest.raises(ValueError, match="filter indices"):
        _fields(tiny, "stem", filters=[99])


def test_model_mode_is_restored_and_no_grad_is_fine(tiny):
    tiny.train()
    with torch.no_grad():
        rf = _fields(tiny, "stem", steps=3)
    assert tiny.training and np.isfinite(rf.raw).all()
    tiny.eval()


def test_npz_round_trip(tiny, tmp_path):
    rf = _fields(tiny, "stem", steps=2)
    path = rf.save(tmp_path / "fields.npz")
    back = ReceptiveFields.load(path)
    assert back.layer == rf.layer and back.params == json.loads(json.dumps(rf.params))
    for name in ("raw", "color", "gray"):
        np.testing.assert_array_equal(getattr(back, name), getattr(rf, name))
    assert [p.name for p in tmp_path.iterdir()] == ["fields.npz"]  # no temp file left behind


def _main(argv: list[str]) -> int:
    """`achroma ...` with the two new commands registered (whether or not COMMANDS lists them yet)."""
    saved = cli.COMMANDS
    cli.COMMANDS = tuple(dict.fromkeys(saved + ("fields", "cluster")))
    try:
        return cli.main(argv)
    finally:
        cli.COMMANDS = saved


def test_cli_fields_then_cluster(tmp_path, capsys):
    fdir, cdir = tmp_path / "fields", tmp_path / "clusters"
    assert _main(["fields", "--model", "seed-densenet-tiny", "--layer", "first", "--steps", "5",
                  "--out", str(fdir)]) == 0
    assert sorted(p.name for p in fdir.iterdir()) == ["fields.npz", "fields_color.png", "fields_gray.png"]
    assert ReceptiveFields.load(fdir / "fields.npz").layer == "stem"
    capsys.readouterr()
    assert _main(["cluster", "--fields", str(fdir / "fields.npz"), "--metric", "mse", "--method", "dbscan",
                  "--keep", "0.55", "--out", str(cdir)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in cdir.iterdir()) == ["clustering.json", "clusters.png", "distances.npy",
                                                      "distances.png"]
    result = Clustering.from_json(cdir / "clustering.json")
    assert f"-> {result.n_clusters} clusters" in printed
    assert "labels: " + " ".join(map(str, result.labels)) in printed
    assert np.load(cdir / "distances.npy").shape == (24, 24)
    assert result.params["metric"] == "mse" and result.layer == "stem"


def test_cli_cluster_other_methods(tmp_path):
    fdir = tmp_path / "f"
    _fields(create_model("seed-densenet-tiny"), "stem", steps=2).save(fdir / "fields.npz")
    assert _main(["cluster", "--fields", str(fdir / "fields.npz"), "--metric", "imed", "--r", "1.5",
                  "--method", "agglomerative", "--n-clusters", "6", "--out", str(tmp_path / "a")]) == 0
    assert Clustering.from_json(tmp_path / "a" / "clustering.json").n_clusters == 6
    assert _main(["cluster", "--fields", str(fdir / "fields.npz"), "--method", "dbscan", "--eps", "0.05",
                  "--out", str(tmp_path / "b")]) == 0
    assert _main(["cluster", "--fields", str(fdir / "fields.npz"), "--method", "kmeans", "--eps", "0.05",
                  "--out", str(tmp_path / "c")]) == 2


def test_cli_refuses_input_folder_and_non_empty_out(tmp_path, capsys):
    fdir = tmp_path / "f"
    _fields(create_model("seed-densenet-tiny"), "stem", steps=2).save(fdir / "fields.npz")
    argv = ["cluster", "--fields", str(fdir / "fields.npz"), "--keep", "0.5"]
    assert _main(argv + ["--out", str(fdir)]) == 2
    assert "folder of the input" in capsys.readouterr().err
    assert sorted(p.name for p in fdir.iterdir()) == ["fields.npz"]
    assert _main(argv + ["--out", str(fdir), "--force"]) == 2  # --force never allows the input folder
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert _main(argv + ["--out", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert _main(argv + ["--out", str(busy), "--force"]) == 0
    assert (busy / "notes.txt").read_text() == "keep me"
