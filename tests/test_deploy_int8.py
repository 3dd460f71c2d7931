"""Issue 23, deployment: int8 export checked against float, refused exports write nothing, the fused
PyTorch deploy form equals the unfused model and round-trips through torch.export.

Everything here runs on the shipped demo model and data (no ../shared/datasets needed) on one thread.
"""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torch.nn as nn

from achroma.cli import main
from achroma.data import load_dataset
from achroma.demo import DEMO_DATA, assets_dir, default_model_path
from achroma.deploy.fuse import deploy_form, export_deploy, fuse_conv_bn
from achroma.fold import BorderCorrectedConv2d, fold_to_gray
from achroma.io import load_checkpoint
from achroma.models import create_model

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "onnxscript"))
requires_onnx = pytest.mark.skipif(not HAVE_ONNX, reason='ONNX extra not installed: pip install "achroma[onnx]"')


@pytest.fixture(scope="module")
def demo_gray():
    """The shipped demo model folded to gray, and its data (train for calibration, test for the check)."""
    color, meta = load_checkpoint(default_model_path())
    gray, _ = fold_to_gray(color.eval(), meta["normalization"])
    source = f"tar:{assets_dir() / DEMO_DATA}"
    return gray.eval(), load_dataset(source, "train"), load_dataset(source, "test")


@requires_onnx
def test_int8_export_agrees_with_float_on_256_demo_test_images(demo_gray, one_thread):
    import onnx

    from achroma.deploy.onnx_export import export_onnx
    from achroma.deploy.quantize import Calibration, dataset_inputs, quantize_checked

    gray, train, test = demo_gray
    calib, _ = dataset_inputs(train, "gray", "none", 300, seed=0)
    x, y = dataset_inputs(test, "gray", "none", 256, seed=0)
    assert len(x) == 256 and torch.bincount(y).min() >= 24  # stratified (26 a class, 4 dropped at random)
    float_bytes = export_onnx(gray, (1, 32, 32))
    calibration = Calibration(images=len(calib), seed=0, dataset="demo", split="train")
    int8, report = quantize_checked(float_bytes, calib, x, y, calibration, max_drop=100.0, time_batches=(1,))
    assert report.images == 256
    assert report.agreement >= 0.98, report.to_dict()
    assert report.int8_bytes < 0.7 * report.float_bytes
    proto = onnx.load_from_string(int8)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = {p.key: p.value for p in proto.metadata_props}
    quant = json.loads(meta["achroma.quantization"])
    assert quant["dtype"] == "int8" and quant["format"] == "QDQ"
    assert quant["calibration"] == {"images": 300, "seed": 0, "dataset": "demo", "split": "train",
                                    "method": "minmax", "stratified": True}
    assert quant["evaluation"]["agreement"] == report.agreement
    assert len(quant["kept_float"]) == 1  # the input conv
    assert meta["achroma.fuse"].startswith("0 conv+BN")  # the float model's metadata is carried over


@requires_onnx
def test_refused_int8_export_writes_nothing_and_exits_2(tmp_path, capsys, one_thread):
    out = tmp_path / "int8.onnx"
    code = main(["export", "--weights", str(default_model_path()), "--out", str(out), "--quantize", "int8",
                 "--max-drop", "-1", "--calib-images", "50", "--eval-images", "200", "--check-images", "8"])
    err = capsys.readouterr().err
    assert code == 2
    assert "int8 export refused" in err and "nothing written" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@requires_onnx
def test_cli_int8_export_writes_the_int8_model_with_its_calibration(tmp_path, capsys, one_thread):
    import onnx

    out = tmp_path / "int8.onnx"
    assert main(["export", "--weights", str(default_model_path()), "--out", str(out), "--quantize", "int8",
                 "--max-drop", "100", "--calib-images", "50", "--calib-seed", "3", "--eval-images", "200",
                 "--check-images", "8"]) == 0
    text = capsys.readouterr().out
    assert "int8 accuracy" in text and "on 200 test images" in text and "int8 (QDQ) ONNX" in text
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    quant = json.loads(meta["achroma.quantization"])
    assert quant["calibration"]["images"] == 50 and quant["calibration"]["seed"] == 3
    assert quant["calibration"]["split"] == "train" and quant["evaluation"]["images"] == 200
    assert "achroma.input" in meta and [p.name for p in tmp_path.iterdir()] == ["int8.onnx"]


def test_int8_options_need_quantize(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(default_model_path()), "--out", str(out), "--max-drop", "2"]) == 2
    assert "only apply with --quantize int8" in capsys.readouterr().err
    assert main(["export", "--weights", str(default_model_path()), "--out", str(out), "--quantize", "int8",
                 "--calib-images", "0"]) == 2
    assert "--calib-images must be at least 1" in capsys.readouterr().err
    assert not out.exists()


def _with_bn_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that a wrong fusion shows."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
    return model.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("name", ["resnet-cifar-20", "seed-densenet-tiny"])
def test_fused_deploy_form_equals_unfused_and_round_trips_torch_export(name, tmp_path, one_thread):
    torch.manual_seed(0)
    color = _with_bn_statistics(create_model(name))
    gray, fold = fold_to_gray(color, "cifar")
    gray.eval()
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    net, report = deploy_form(gray)
    if name == "resnet-cifar-20":  # conv1 -> bn1 and both pairs of each of the 9 blocks
        assert len(report.fused) == 19 and not report.kept
        assert (fold.layer, "bn1") in report.fused
        assert isinstance(net.net.get_submodule(fold.layer), BorderCorrectedConv2d)
    else:  # pre-activation DenseNet: its BNs follow a ReLU or a concat, none follows a conv alone
        assert not report.fused and report.kept
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules()) or name != "resnet-cifar-20"
    with torch.no_grad():
        expected, got = gray(x), net(x)
    assert _rel(expected, got) <= 1e-5
    path = tmp_path / "deploy.pt2"
    torch.export.save(export_deploy(gray, (1, 32, 32)), path)
    loaded = torch.export.load(path).module()
    with torch.no_grad():
        assert _rel(expected, loaded(x)) <= 1e-5
        assert _rel(gray(x[:1]), loaded(x[:1])) <= 1e-5  # dynamic batch


def test_fuse_leaves_the_input_model_unchanged_and_keeps_shared_outputs():
    class TwoHeads(nn.Module):  # conv output read by a BN and by an add: the BN must stay
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = _with_bn_statistics(TwoHeads())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm, report = fuse_conv_bn(model)
    assert not report.fused and "bn" in report.kept
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert _rel(model(x), gm(x)) <= 1e-6


@requires_onnx
def test_bench_times_int8_beside_float_and_the_deploy_form(one_thread):
    from achroma.deploy.bench import bench, render_markdown

    torch.manual_seed(0)
    net = _with_bn_statistics(nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)))
    result = bench({"net": (net, (1, 16, 16))}, engines=("torch", "torch-deploy", "onnxruntime"), threads=[1],
                   batch=4, runs=3, throughput_runs=2, warmup=1, int8=True, calib_images=8)
    rows = {(r["model"], r["engine"]): r for r in result["rows"]}
    assert set(rows) == {("net", "torch"), ("net", "torch-deploy"), ("net", "onnxruntime"), ("net int8", "onnxruntime")}
    assert rows[("net int8", "onnxruntime")]["dtype"] == "int8" and rows[("net", "onnxruntime")]["dtype"] == "float32"
    assert rows[("net int8", "onnxruntime")]["file_bytes"] < rows[("net", "onnxruntime")]["file_bytes"]
    assert result["models"]["net"]["fused"].startswith("2 conv+BN")
    text = render_markdown(result)
    assert "| net int8 | int8 |" in text and "PyTorch deploy" in text
    with pytest.raises(ValueError, match="int8 models run in ONNX Runtime"):
        bench({"net": (net, (1, 16, 16))}, engines=("torch",), int8=True)


@pytest.mark.parametrize("size", [(32, 32), (17, 24)])
def test_border_mask_conv_equals_the_border_corrected_conv(size):
    from achroma.fold.border import BorderMaskConv2d, to_mask_convs

    torch.manual_seed(0)
    gray, fold = fold_to_gray(_with_bn_statistics(create_model("resnet-cifar-20")), "cifar")
    conv = gray.get_submodule(fold.layer)
    assert isinstance(conv, BorderCorrectedConv2d) and conv.border_kernel.abs().max() > 0
    x = torch.rand(3, 1, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert _rel(conv(x), BorderMaskConv2d(conv)(x)) <= 1e-5
        expected = gray(x)
        assert to_mask_convs(gray) == 1 and isinstance(gray.get_submodule(fold.layer), BorderMaskConv2d)
        assert _rel(expected, gray(x)) <= 1e-5
