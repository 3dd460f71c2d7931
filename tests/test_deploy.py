"""Deployment: ONNX export agrees with PyTorch in ONNX Runtime for every model family, folded and merged;
`achroma export` refuses bad exports and writes nothing; `achroma bench` times models round-robin.

The ONNX tests skip cleanly without the `achroma[onnx]` extra (CI installs it, so they run there);
the missing-extra test runs either way (it hides the packages).
"""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from achroma.cli import main
from achroma.data import load_dataset
from achroma.demo import DEMO_DATA, assets_dir, default_model_path
from achroma.fold import fold_to_gray
from achroma.io import load_checkpoint, save_checkpoint
from achroma.models import create_model
from achroma.surgery import merge_channels

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "onnxscript"))
requires_onnx = pytest.mark.skipif(not HAVE_ONNX, reason='ONNX extra not installed: pip install "achroma[onnx]"')


@pytest.fixture(scope="module")
def demo_test_images():
    """The shipped CIFAR-10 (JPEG) demo test images as gray [0, 1] batches: 20 images, 2 per class."""
    from achroma.deploy.onnx_export import check_images

    data = load_dataset(f"tar:{assets_dir() / DEMO_DATA}", "test")
    return check_images(data, "gray", "none", 20)


def _folded_merged(name: str):
    """`name` (seeded init), folded to gray, its first conv's channels merged in pairs (about half kept)."""
    torch.manual_seed(0)
    color = create_model(name).eval()
    gray, report = fold_to_gray(color, "cifar")
    c = gray.get_submodule(report.layer).out_channels
    merged = merge_channels(gray, report.layer, [i // 2 for i in range(c)], torch.rand(1, 1, 32, 32)).eval()
    assert merged.get_submodule(report.layer).out_channels == (c + 1) // 2
    return merged


@requires_onnx
@pytest.mark.parametrize("name", ["seed-densenet-tiny", "resnet-cifar-20", "densenet-bc-100", "tv:resnet18"])
def test_folded_merged_export_agrees_with_pytorch(name, demo_test_images):
    import onnx

    from achroma.deploy.onnx_export import compare_with_torch, export_onnx

    model = _folded_merged(name)
    onnx_bytes = export_onnx(model, (1, 32, 32))
    dims = onnx.load_from_string(onnx_bytes).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 32, 32]  # dynamic batch, 1 channel
    check = compare_with_torch(onnx_bytes, model, demo_test_images, batch_size=8)  # batches 8, 8, 4 and 1
    assert check["max_abs_logit_diff"] <= 1e-4
    assert check["agree"] == check["images"] == 20
    assert check["max_abs_logit"] > 100 * max(check["max_abs_logit_diff"], 1e-7)  # logits not all ~0


@requires_onnx
def test_color_model_with_option_a_shortcuts_exports_with_3_channels():
    import onnx

    from achroma.deploy.onnx_export import compare_with_torch, export_onnx

    torch.manual_seed(0)
    color = create_model("resnet-cifar-20").eval()  # PadShortcut: zero channels padded on by F.pad
    onnx_bytes = export_onnx(color, (3, 32, 32))
    assert onnx.load_from_string(onnx_bytes).graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3
    check = compare_with_torch(onnx_bytes, color, torch.rand(9, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    assert check["max_abs_logit_diff"] <= 1e-4 and check["agree"] == 9


@requires_onnx
def test_cli_export_of_a_merged_checkpoint_writes_input_spec(tmp_path, capsys):
    import onnx

    model = _folded_merged("seed-densenet-tiny")
    classes = [f"c{i}" for i in range(10)]
    save_checkpoint(tmp_path / "m", model, {"mode": "gray", "normalization": {"mean": [0.0], "std": [1.0]},
                                            "surgery": True, "dataset": {"classes": classes}})
    out = tmp_path / "out" / "m.onnx"
    assert main(["export", "--weights", str(tmp_path / "m.safetensors"), "--format", "onnx", "--out", str(out),
                 "--check-images", "20"]) == 0
    printed = capsys.readouterr().out
    assert "max |logit difference|" in printed and "predictions agree 20/20" in printed
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    spec = json.loads(meta["achroma.input"])
    assert (spec["channels"], spec["height"], spec["width"], spec["mode"]) == (1, 32, 32, "gray")
    assert spec["normalization"] == {"mean": [0.0], "std": [1.0]}
    assert json.loads(meta["achroma.classes"]) == classes
    assert json.loads(meta["achroma.check"])["passed"] is True
    assert proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 1
    # an existing file is kept unless --force; the input is never the output
    assert main(["export", "--weights", str(tmp_path / "m.safetensors"), "--out", str(out)]) == 2
    assert main(["export", "--weights", str(tmp_path / "m.safetensors"), "--out",
                 str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "exists" in err[0] and "must end in .onnx" in err[1]


@requires_onnx
def test_export_refused_when_onnx_runtime_disagrees(tmp_path, capsys, monkeypatch):
    import achroma.deploy.onnx_export as ox

    real = ox.compare_with_torch

    def off_by_a_lot(*args, **kwargs):
        return {**real(*args, **kwargs), "max_abs_logit_diff": 0.5}

    monkeypatch.setattr(ox, "compare_with_torch", off_by_a_lot)
    out = tmp_path / "demo.onnx"
    assert main(["export", "--weights", str(default_model_path()), "--out", str(out), "--check-images", "10"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "achroma:" in line]  # not decoding progress
    assert len(err) == 1 and "export refused" in err[0] and "nothing written" in err[0]
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left behind


@pytest.mark.parametrize("command", ["export", "bench"])
def test_missing_extra_is_one_line_naming_it(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    weights = str(default_model_path())
    argv = (["export", "--weights", weights, "--out", str(tmp_path / "m.onnx")] if command == "export"
            else ["bench", "--weights", weights, "--out", str(tmp_path / "bench")])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "achroma[onnx]" in err[0]  # names onnxruntime, or onnx where even that is missing
    assert list(tmp_path.iterdir()) == []


def test_bench_pytorch_only_without_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    model, meta = load_checkpoint(default_model_path())
    gray, report = fold_to_gray(model, meta["normalization"])
    save_checkpoint(tmp_path / "in" / "gray", gray, report.checkpoint_meta())
    out = tmp_path / "bench"
    assert main(["bench", "--weights", str(default_model_path()), "--weights", str(tmp_path / "in" / "gray.safetensors"),
                 "--name", "color", "--name", "folded", "--engines", "torch", "--threads", "1", "--runs", "2",
                 "--throughput-runs", "1", "--warmup", "0", "--batch", "4", "--out", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert [(r["model"], r["engine"], r["threads"]) for r in result["rows"]] == [("color", "torch", 1),
                                                                                ("folded", "torch", 1)]
    assert result["rows"][0]["latency_speedup"] == 1.0 and result["rows"][1]["macs"] < result["rows"][0]["macs"]
    assert "| folded |" in (out / "bench.md").read_text() and "| folded |" in capsys.readouterr().out


@requires_onnx
def test_bench_round_robin_in_both_engines():
    from achroma.deploy.bench import bench, render_markdown

    torch.manual_seed(0)
    small = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3))
    wide = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 3))
    result = bench({"wide": (wide, (1, 8, 8)), "small": (small, (1, 8, 8))}, threads=[1, 2], batch=4, runs=3,
                   throughput_runs=2, warmup=1)
    assert len(result["rows"]) == 2 * 2 * 2
    assert {(r["engine"], r["threads"]) for r in result["rows"]} == {(e, n) for e in ("torch", "onnxruntime")
                                                                     for n in (1, 2)}
    for r in result["rows"]:
        assert r["latency_b1"]["runs"] == 3 and r["latency_b1"]["p90_ms"] >= r["latency_b1"]["median_ms"] > 0
        assert r["throughput"]["batch"] == 4 and r["throughput"]["images_per_s"] > 0
        if r["model"] == "wide":
            assert r["latency_speedup"] == 1.0 and r["throughput_speedup"] == 1.0
    assert result["models"]["small"]["macs"] < result["models"]["wide"]["macs"]
    assert all(m["onnx_check"]["max_abs_logit_diff"] <= 1e-5 for m in result["models"].values())
    assert "ONNX Runtime" in render_markdown(result)
