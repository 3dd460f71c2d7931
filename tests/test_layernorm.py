"""LayerNorm over channels (ConvNeXt), merged approximately when asked (`CompressConfig(layernorm='merge')`).

By default a group normalized by a LayerNorm over its channels is refused (tests/test_zoo.py,
tests/test_timm_zoo.py). With `layernorm='merge'` the norm's affine is averaged like BatchNorm's and
its statistics are taken over the channels that remain; timm ConvNeXt's layer scale is first folded
into fc2 (exact). Checked here: the layer-scale fold changes nothing; the default still refuses the
streams and merges only the MLP's hidden channels; the merge mode plans and merges the streams within
both budgets (FlopCounter, parameter count); a merged model saves and reloads with identical outputs.
How much accuracy the approximation costs is measured in docs/RESULTS.md (issue 24), not here.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

timm = pytest.importorskip("timm", reason="timm is not installed (pip install achroma[timm])")

from achroma.costs import count_macs  # noqa: E402
from achroma.io import load_checkpoint, save_checkpoint  # noqa: E402
from achroma.models.timm_models import fold_layer_scales  # noqa: E402
from achroma.pipeline import Budget, CompressConfig, Compressor  # noqa: E402
from achroma.surgery.graph import layernorm_merges  # noqa: E402


@pytest.fixture(scope="module")
def convnext() -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=10, pretrained=False).eval()
    with torch.no_grad():  # layer scales away from their 1e-6 init, so that folding them is visible
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
    model.achroma_arch = {"name": "timm:convnext_atto", "in_chans": 3, "num_classes": 10}
    return model


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_layer_scale_fold_is_exact(convnext):
    model = copy.deepcopy(convnext)
    x = torch.randn(3, 3, 32, 32)
    before = model(x)
    done = fold_layer_scales(model)
    assert len(done) == 12 and all(getattr(model.get_submodule(p), "gamma") is None for p in done)
    assert torch.allclose(model(x), before, atol=1e-5, rtol=1e-5)
    assert fold_layer_scales(model) == []  # nothing left to fold


def test_config_rejects_unknown_mode():
    with pytest.raises(ValueError, match="layernorm"):
        CompressConfig(layernorm="approximate")
    with pytest.raises(ValueError, match="layernorm"):
        with layernorm_merges("sometimes"):
            pass


@pytest.mark.parametrize("mode", ["refuse", "merge"])
def test_whole_network_budgets(convnext, mode):
    torch.manual_seed(0)
    comp = Compressor(CompressConfig(seed=0, layernorm=mode, progress=False), Budget(macs=0.5, params=0.5))
    comp.fit(convnext, "imagenet", size=32)
    streams = [r for r in comp.plan_.widths if "mlp" not in r]
    if mode == "refuse":
        assert streams == [] and comp.layer_scales_ == []
    else:
        assert "stem.0" in streams and len(comp.layer_scales_) == 12
        assert comp.model_.stem[1].normalized_shape[0] == comp.plan_.widths["stem.0"]
    full_macs, full_params = count_macs(comp.folded_, (1, 32, 32)), _params(comp.folded_)
    macs, params = count_macs(comp.model_, (1, 32, 32)), _params(comp.model_)
    assert macs <= 0.5 * full_macs * 1.01 and params <= 0.5 * full_params * 1.01  # one channel a group
    assert macs >= 0.45 * full_macs  # the budget is used, not left in rounding
    assert torch.isfinite(comp.model_(torch.rand(2, 1, 32, 32))).all()


def test_merged_layernorm_model_reloads(convnext, tmp_path):
    comp = Compressor(CompressConfig(seed=0, layernorm="merge", progress=False), Budget(macs=0.5))
    comp.fit(convnext, "imagenet", size=32)
    path = save_checkpoint(tmp_path / "merged", comp.model_, {"normalization": "none", "mode": "gray"})
    loaded, _ = load_checkpoint(path)
    x = torch.rand(4, 1, 32, 32)
    assert torch.allclose(loaded.eval()(x), comp.model_.eval()(x), atol=1e-6)


def test_timm_keyword_arguments_reach_the_model_and_its_record():
    from types import SimpleNamespace

    from achroma.cli.common import resolve_model

    args = SimpleNamespace(model="timm:convnext_atto", model_args='{"ls_init_value": 1.0}', weights=None,
                           in_chans=None, num_classes=10, mode=None, normalize=None)
    model, mode, _, _ = resolve_model(args)
    assert mode == "color" and torch.all(model.stages[0].blocks[0].gamma == 1.0)
    assert model.achroma_arch["ls_init_value"] == 1.0  # a checkpoint rebuilds it with the same arguments
    with pytest.raises(ValueError, match="--model-args goes with"):
        resolve_model(SimpleNamespace(**{**vars(args), "model": "resnet-cifar-20"}))


def test_trained_repairs_and_the_search_run_on_a_model_without_batchnorm(convnext):
    """distill re-estimates BN statistics after its epoch and the search after each move: a LayerNorm
    network has none, and neither may fail on it (the bn-stats repair itself still refuses it)."""
    from achroma.data import ImageDataset
    from achroma.pipeline import RepairConfig
    from achroma.pipeline.repairs import repair_job
    from achroma.repair import get_repair

    g = torch.Generator().manual_seed(0)
    images = ImageDataset(torch.randint(0, 256, (40, 3, 32, 32), generator=g, dtype=torch.uint8),
                          torch.arange(40) % 10, [str(i) for i in range(10)], name="tiny")
    comp = Compressor(CompressConfig(seed=0, progress=False), Budget(macs=0.5, params=0.5, allocation="search"))
    comp.fit(convnext, "imagenet", images, size=32)
    assert comp.plan_.search is not None
    job = repair_job(images, RepairConfig(batch_size=20), seed=0, teacher=convnext, teacher_normalize="imagenet",
                     reference=comp.folded_)
    before = {k: v.clone() for k, v in comp.model_.state_dict().items()}
    out = get_repair("distill")(copy.deepcopy(comp.model_), job)
    assert any(not torch.equal(before[k], v) for k, v in out.state_dict().items())  # it trained
    with pytest.raises(ValueError, match="no BatchNorm"):
        get_repair("bn-stats")(copy.deepcopy(comp.model_), job)


def test_compress_cli_layernorm_flag_merges_the_streams_and_the_default_keeps_them(tmp_path):
    """`achroma compress --layernorm merge` reaches CompressConfig: the stem's LayerNorm narrows with its
    conv, and the saved model reloads; without the flag the stem stays whole."""
    from achroma.cli import main
    from achroma.demo import DEMO_DATA, assets_dir

    widths = {}
    for mode in ("refuse", "merge"):
        out = tmp_path / mode
        assert main(["compress", "--model", "timm:convnext_atto", "--num-classes", "10", "--dataset",
                     f"tar:{assets_dir() / DEMO_DATA}", "--target-macs", "0.5", "--layernorm", mode,
                     "--repair", "none", "--no-latency", "--test-limit", "2", "--threads", "1", "--quiet",
                     "--out", str(out)]) == 0
        merged, meta = load_checkpoint(out / "model.safetensors")
        widths[mode] = (merged.stem[0].out_channels, merged.stem[1].normalized_shape[0])
        assert torch.isfinite(merged(torch.rand(2, 1, 32, 32))).all()
    assert widths["refuse"] == (40, 40)
    assert widths["merge"][0] == widths["merge"][1] < 40
