"""Tests for achroma.pipeline (compress), achroma.report (table, costs) and `achroma compress`.

Fast: a random-init seed-densenet-tiny on tiny synthetic 16x16 data, a few ascent steps.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import achroma.cli as cli
from achroma.clustering import Clustering
from achroma.data import ImageDataset
from achroma.fields import conv_forward_order
from achroma.io import load_checkpoint, save_checkpoint
from achroma.models import create_model, list_models, register_model
from achroma.pipeline import CompressConfig, RepairConfig, check_repairs, compress, per_layer, repair_model, resolve_layers
from achroma.report import build_report, count_macs, flop_counter_flops, measure_latency, render_markdown

torch.set_num_threads(1)

SIZE = 16
CLASSES = [f"c{i}" for i in range(10)]
FAST = {"steps": 3}
BASE_ROWS = ["color", "color-gray3", "folded", "merged"]


def _data(n: int, seed: int, split: str) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return ImageDataset(images, torch.arange(n) % 10, list(CLASSES), name="synthetic", split=split,
                        extra={"display_name": "Synthetic (test)"})


@pytest.fixture(scope="module")
def train_set() -> ImageDataset:
    return _data(40, 1, "train")


@pytest.fixture(scope="module")
def test_set() -> ImageDataset:
    return _data(30, 2, "test")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("seed-densenet-tiny")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # BN statistics away from 0/1, so repairs and merges change something
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _config(**kw) -> CompressConfig:
    kw.setdefault("layers", "first:1")
    kw.setdefault("keep", 0.5)
    kw.setdefault("fields", FAST)
    kw.setdefault("repair_config", RepairConfig(batch_size=16))
    return CompressConfig(progress=False, **kw)


def _compress(train_set, test_set, clusterings=None, **kw):
    return compress(_model(), "cifar", train_set, test_set, _config(**kw), clusterings=clusterings, log=None)


@pytest.fixture(scope="module")
def two_layers(train_set, test_set):
    """The notebook's setting on the tiny model: first two layers, MSE then IMED, DBSCAN, both repairs."""
    return _compress(train_set, test_set, layers="first:2", metric="mse,imed", repair="bn-train,bn-stats",
                     fields_from="current")


# --- the pipeline ------------------------------------------------------------------------------------

@pytest.mark.parametrize("repair", ["bn-train", "bn-stats", "distill", "none"])
def test_pipeline_each_repair_has_all_rows(train_set, test_set, repair):
    result = _compress(train_set, test_set, repair=repair)
    assert [r.key for r in result.rows] == BASE_ROWS + [f"merged+{repair}", f"folded+{repair}"]
    for row in result.rows:
        assert 0.0 <= row.accuracy <= 1.0 and row.n == len(test_set)
    same = result.row(f"folded+{repair}")  # the uncompressed reference with the same repair
    assert same.params == result.row("folded").params
    assert result.final_key == ("merged" if repair == "none" else f"merged+{repair}")
    if repair == "none":
        assert same.accuracy == result.row("folded").accuracy
    else:
        assert result.models[f"folded+{repair}"] is not result.models["folded"]


def test_parameters_and_macs_fall_when_filters_merge(two_layers):
    r = two_layers
    assert r.row("color").params > r.row("folded").params > r.row("merged").params
    assert r.row("merged+bn-train").params == r.row("merged").params
    for ly in r.layers:
        assert ly.channels_after < ly.channels_before
        assert ly.params_after < ly.params_before
        assert ly.channels_after == ly.clustering.n_clusters
    shape = (1, SIZE, SIZE)
    assert count_macs(r.models["merged"], shape) < count_macs(r.models["folded"], shape)


def test_layers_resolved_in_forward_order_with_a_metric_each(two_layers):
    order = conv_forward_order(_model(), SIZE)
    assert [ly.layer for ly in two_layers.layers] == order[:2]
    assert [ly.metric for ly in two_layers.layers] == ["mse", "imed"]
    assert two_layers.layers[1].clustering.params["metric"] == "imed"
    # layer 2's fields were computed in the folded model with layer 1 already merged: 1 input channel
    assert two_layers.layers[1].fields.raw.shape[1] == 1


def test_input_models_are_not_modified(train_set, test_set):
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compress(model, "cifar", train_set, test_set, _config(repair="bn-train"), log=None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())  # compress works on a copy: mode (and device) kept


def test_folded_reference_gets_exactly_the_same_repair(two_layers, train_set):
    again = repair_model(two_layers.models["folded"], "bn-train", train_set, RepairConfig(batch_size=16), seed=0)
    ref = two_layers.models["folded+bn-train"]
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ref.state_dict().values()))
    folded = two_layers.models["folded"]
    assert not torch.equal(ref.state_dict()["head_norm.weight"], folded.state_dict()["head_norm.weight"])


def test_distill_repair_pulls_the_gray_model_toward_the_color_model(two_layers, train_set):
    """The color model teaching its merged gray self: logits on the calibration images move toward its own."""
    color, merged = two_layers.models["color"], copy.deepcopy(two_layers.models["merged"])
    with torch.no_grad():  # a student whose logits are clearly off the teacher's
        head = merged.classifier
        head.weight.add_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0)))
    x = train_set.images.float() / 255
    gray = (0.2989 * x[:, :1] + 0.5870 * x[:, 1:2] + 0.1140 * x[:, 2:])
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    with torch.no_grad():
        target = color((x - mean) / std)
        before = F.mse_loss(merged(gray), target).item()
    config = RepairConfig(batch_size=8, epochs=3, distill_lr=0.02)
    fixed = repair_model(merged, "distill", train_set, config, teacher=color, teacher_normalize="cifar")
    with torch.no_grad():
        after = F.mse_loss(fixed(gray), target).item()
    assert after < 0.8 * before
    assert fixed is not merged and not torch.equal(fixed.state_dict()["stem.weight"], merged.state_dict()["stem.weight"])
    with pytest.raises(ValueError, match="needs the color model"):
        repair_model(merged, "distill", train_set, config)


def test_an_epoch_count_on_a_repair_equals_that_many_config_epochs(two_layers, train_set):
    """'bn-train:2' is bn-train with RepairConfig.epochs=2, bit for bit; epochs only where training happens."""
    folded = two_layers.models["folded"]
    named = repair_model(folded, "bn-train:2", train_set, RepairConfig(batch_size=16), seed=0)
    configured = repair_model(folded, "bn-train", train_set, RepairConfig(batch_size=16, epochs=2), seed=0)
    one = repair_model(folded, "bn-train", train_set, RepairConfig(batch_size=16), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(named.state_dict().values(), configured.state_dict().values()))
    assert not torch.equal(named.state_dict()["head_norm.weight"], one.state_dict()["head_norm.weight"])
    for bad in ("bn-stats:2", "finetune:0", "finetune:x", "ls-refit:1"):
        with pytest.raises(ValueError, match="epoch count|takes no epoch"):
            check_repairs(bad)


def test_finetune_repairs_lower_the_training_loss_and_move_every_layer(two_layers, train_set):
    """finetune trains all weights on the labels; finetune-kd adds the color teacher (which it needs)."""
    merged = two_layers.models["merged"]
    x = (0.2989 * train_set.images[:, :1] + 0.5870 * train_set.images[:, 1:2] + 0.1140 * train_set.images[:, 2:2 + 1])
    x = x.float() / 255

    def loss(net):
        with torch.no_grad():
            return F.cross_entropy(net.eval()(x), train_set.labels).item()

    config = RepairConfig(epochs=15, finetune_batch_size=8, finetune_lr=0.02)
    tuned = repair_model(merged, "finetune", train_set, config, seed=0)
    assert loss(tuned) < loss(merged)
    changed = [k for k, v in tuned.state_dict().items() if v.is_floating_point()
               and not torch.equal(v, merged.state_dict()[k])]
    assert "stem.weight" in changed and "classifier.weight" in changed
    with pytest.raises(ValueError, match="needs the color model"):
        repair_model(merged, "finetune-kd", train_set, config)
    kd = repair_model(merged, "finetune-kd:1", train_set, config, seed=0, teacher=two_layers.models["color"],
                      teacher_normalize="cifar")
    assert not torch.equal(kd.state_dict()["stem.weight"], merged.state_dict()["stem.weight"])


def test_saved_model_reloads_with_identical_outputs(two_layers, tmp_path):
    model = two_layers.final_model.eval()
    save_checkpoint(tmp_path / "model", model, two_layers.checkpoint_meta())
    loaded, meta = load_checkpoint(tmp_path / "model.safetensors")
    loaded.eval()
    x = torch.rand(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert meta["mode"] == "gray" and meta["surgery"] is True
    saved = [ly["filters_after"] for ly in meta["compression"]["layers"]]
    assert saved == [ly.channels_after for ly in two_layers.layers]


def test_given_clustering_is_used_and_checked(train_set, test_set):
    labels = np.repeat(np.arange(12), 2)  # 24 stem filters in pairs
    given = Clustering(labels, [int(np.flatnonzero(labels == k)[0]) for k in range(12)], 12, "manual", layer="stem")
    result = _compress(train_set, test_set, layers="stem", clusterings={"stem": given}, keep=None, repair="none")
    assert result.layers[0].channels_after == 12 and result.layers[0].fields is None
    short = Clustering(np.arange(10), list(range(10)), 10, "manual", layer="stem")
    with pytest.raises(ValueError, match="10 labels but the layer has 24"):
        _compress(train_set, test_set, layers="stem", clusterings={"stem": short}, keep=None, repair="none")


def test_stage_errors_are_value_errors(train_set, test_set):
    with pytest.raises(ValueError, match="not a module"):
        _compress(train_set, test_set, layers="nope.conv")
    with pytest.raises(ValueError, match="one cluster"):
        _compress(train_set, test_set, keep=None, eps=1.0, repair="none")
    with pytest.raises(ValueError, match="exactly one of eps or keep"):
        _compress(train_set, test_set, keep=None)
    with pytest.raises(ValueError, match="unknown repair"):
        _compress(train_set, test_set, repair="fine-tune")
    with pytest.raises(ValueError, match="2 values for 1 layers"):
        _compress(train_set, test_set, metric="mse,imed")


def test_resolve_layers_and_per_layer():
    model = _model()
    order = conv_forward_order(model, SIZE)
    assert resolve_layers(model, "first:3", SIZE) == order[:3]
    assert resolve_layers(model, f"first,{order[3]}", SIZE) == [order[0], order[3]]
    for bad, msg in (("first:0", "at least 1"), ("first:x", "positive integer"), ("first:999", "only"),
                     (f"stem,{order[0]}", "more than once"), ("", "no layers")):
        with pytest.raises(ValueError, match=msg):
            resolve_layers(model, bad, SIZE)
    assert per_layer("0.1", 3, "eps", float) == [0.1, 0.1, 0.1]
    assert per_layer("0.1,-", 2, "eps", float) == [0.1, None]
    with pytest.raises(ValueError, match="cannot read"):
        per_layer("x", 1, "eps", float)


# --- the report ----------------------------------------------------------------------------------------

def test_report_has_every_row_and_renders(two_layers):
    report = build_report(two_layers, latency=False)
    keys = [r["key"] for r in report["rows"]]
    assert keys == BASE_ROWS + ["merged+bn-train", "folded+bn-train", "merged+bn-stats", "folded+bn-stats"]
    json.dumps(report)  # plain data
    md = render_markdown(report)
    assert "Synthetic (test)" in md and "folded gray model (uncompressed) + bn-train" in md
    assert md.count("\n| ") >= len(keys) + 2 + len(two_layers.layers)
    stages = report["stage_seconds"]  # per stage, summed over the two layers
    assert {"fold", "fields", "distances", "clustering", "merge", "evaluate", "repair merged+bn-train"} <= set(stages)
    fields = sum(v for k, v in two_layers.timings.items() if k.startswith("fields "))
    assert stages["fields"] == pytest.approx(fields, abs=2e-3) and "## Time per stage" in md


def test_macs_agree_with_torch_flop_counter():
    model = _model()
    assert flop_counter_flops(model, (3, SIZE, SIZE)) == 2 * count_macs(model, (3, SIZE, SIZE))


def test_measure_latency_reports_median_and_threads():
    lat = measure_latency(nn.Conv2d(1, 2, 3), (1, 8, 8), batch=2, runs=3, warmup=1)
    assert lat["median_ms"] > 0 and lat["runs"] == 3 and lat["threads"] == torch.get_num_threads()


# --- the CLI -------------------------------------------------------------------------------------------

class _LinearFirst(nn.Module):
    """A model whose first layer is a Linear over the image rows: it cannot be folded to gray."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10):
        super().__init__()
        self.pre = nn.Linear(SIZE, SIZE)
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.bn(self.conv(self.pre(x)))).mean((2, 3)))


if "test-linear-first" not in list_models():
    register_model("test-linear-first")(lambda in_chans=3, num_classes=10, **kw: _LinearFirst(in_chans, num_classes))


def _achroma(*argv: str) -> int:
    """`achroma ...` with `compress` registered (whether or not COMMANDS lists it yet)."""
    saved = cli.COMMANDS
    cli.COMMANDS = tuple(dict.fromkeys(saved + ("compress",)))
    try:
        return cli.main([str(a) for a in argv])
    finally:
        cli.COMMANDS = saved


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory) -> str:
    """`folder:` data set of PNGs: 3 train and 2 test images per class."""
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return f"folder:{root}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    return save_checkpoint(folder / "color", _model(), {"mode": "color", "normalization": {
        "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}})


def _cli_args(checkpoint: Path, data: str, out: Path, *extra: str) -> list[str]:
    return ["compress", "--weights", checkpoint, "--dataset", data, "--steps", "3", "--no-latency",
            "--repair-batch-size", "10", "--threads", "1", "--quiet", "--out", out, *extra]


def test_cli_end_to_end_and_evaluate_reloads(checkpoint, folder_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert _achroma(*_cli_args(checkpoint, folder_data, out, "--layers", "first:2", "--metric", "mse,imed",
                               "--keep", "0.5", "--repair", "bn-train,bn-stats")) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "model.json", "report.md", "report.json", "clustering-stem.json",
            "fields-stem.png", "distances-stem.png", "clusters-stem.png"} <= names
    assert any(n.startswith("clustering-features.") for n in names)
    report = json.loads((out / "report.json").read_text())
    capsys.readouterr()
    assert _achroma("evaluate", "--weights", out / "model.safetensors", "--dataset", folder_data,
                    "--mode", "gray", "--json") == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    final = next(r for r in report["rows"] if r["key"] == report["final_model"])
    assert evaluated["accuracy"] == final["accuracy"] and evaluated["params"] == final["params"]
    # a saved clustering can be fed back in
    again = tmp_path / "again"
    assert _achroma(*_cli_args(checkpoint, folder_data, again, "--layers", "stem", "--clustering",
                               out / "clustering-stem.json", "--repair", "none")) == 0
    assert json.loads((again / "report.json").read_text())["layers"][0]["filters_after"] == \
        report["layers"][0]["filters_after"]


def _expect_refusal(argv: list, out: Path, capsys, message: str) -> None:
    capsys.readouterr()
    assert _achroma(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()
    assert not any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir())


def test_cli_errors_exit_2_and_write_nothing(checkpoint, folder_data, tmp_path, capsys):
    out = tmp_path / "out"
    _expect_refusal(_cli_args(checkpoint, folder_data, out, "--layers", "stem,no.such.conv", "--keep", "0.5"),
                    out, capsys, "'no.such.conv' is not a module")
    short = tmp_path / "short.json"
    Clustering(np.arange(10), list(range(10)), 10, "manual", layer="stem").to_json(short)
    _expect_refusal(_cli_args(checkpoint, folder_data, out, "--layers", "stem", "--clustering", short),
                    out, capsys, "10 labels but the layer has 24 filters")
    _expect_refusal(_cli_args(checkpoint, folder_data, out, "--eps", "1.0"), out, capsys, "one cluster")
    _expect_refusal(_cli_args(checkpoint, folder_data, out, "--keep", "0.5", "--metric", "euclid"),
                    out, capsys, "unknown metric")
    _expect_refusal(_cli_args(checkpoint, folder_data, out, "--cluster", "kmeans", "--eps", "0.1"), out, capsys,
                    "kmeans takes keep")
    torch.manual_seed(0)
    odd = save_checkpoint(tmp_path / "in" / "linear", create_model("test-linear-first"), {"normalization": "cifar"})
    _expect_refusal(_cli_args(odd, folder_data, out, "--layers", "conv", "--keep", "0.5"), out, capsys,
                    "not a Conv2d: cannot fold")


def test_cli_refuses_the_input_folder_and_non_empty_out(checkpoint, folder_data, tmp_path, capsys):
    before = sorted(p.name for p in checkpoint.parent.iterdir())
    assert _achroma(*_cli_args(checkpoint, folder_data, checkpoint.parent, "--keep", "0.5", "--force")) == 2
    assert "is the folder of the input" in capsys.readouterr().err
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == before
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    assert _achroma(*_cli_args(checkpoint, folder_data, full, "--keep", "0.5")) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in full.iterdir()) == ["keep.txt"]


def test_fields_from_the_color_model_by_default(train_set, test_set):
    result = _compress(train_set, test_set, layers="first:2", repair="none")
    assert result.settings["fields_from"] == "color"
    for layer in result.layers:  # computed in the color model, clustered on their luma
        assert layer.fields.raw.shape[1] == 3 and layer.fields.gray.ndim == 3
    with pytest.raises(ValueError, match="fields_from"):
        _compress(train_set, test_set, fields_from="teacher")


def test_build_report_times_every_architecture(two_layers):
    report = build_report(two_layers, runs_b1=2, runs_b256=1, warmup=0)
    per = report["costs"]["per_architecture"]
    assert set(per) == {"color", "folded", "merged"}
    for row in report["rows"]:
        assert row["latency_ms_b1"] > 0 and row["latency_ms_b256"] > 0
    assert "round-robin" in report["costs"]["latency"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_the_whole_pipeline_runs_on_cuda(train_set, test_set):
    """fold, fields, merge, every repair and scoring on the GPU; the result stays there, and agrees with
    the same run on the CPU up to float rounding."""
    kw = dict(layers="first:2", keep=0.5, repair="ls-refit,bn-train,bn-stats,distill")
    gpu = _compress(train_set, test_set, device="cuda", **kw)
    assert {p.device.type for p in gpu.final_model.parameters()} == {"cuda"}
    cpu = _compress(train_set, test_set, device="cpu", **kw)
    assert abs(gpu.row("merged").accuracy - cpu.row("merged").accuracy) <= 0.05


def test_cli_whole_network_target_defaults_to_the_measured_best_selection(checkpoint, folder_data, tmp_path):
    """With a budget, compress uses k-means on the raw weights (docs/RESULTS.md: the best whole-network
    merge; the receptive fields lost to it); with chosen layers it keeps the seed's fields + dbscan."""
    out, layer = tmp_path / "budget", tmp_path / "layer"
    assert _achroma(*_cli_args(checkpoint, folder_data, out, "--target-macs", "0.6", "--repair", "none")) == 0
    settings = json.loads((out / "model.json").read_text())["compression"]["settings"]
    assert (settings["selection"], settings["cluster_method"]) == ("weights", "kmeans")
    assert _achroma(*_cli_args(checkpoint, folder_data, layer, "--layers", "stem", "--keep", "0.5",
                               "--repair", "none")) == 0
    settings = json.loads((layer / "model.json").read_text())["compression"]["settings"]
    assert (settings["selection"], settings["cluster_method"]) == ("fields", "dbscan")
