"""Model families: parameter counts match the architectures, foreign checkpoints load."""
from __future__ import annotations

import pytest
import torch

from achroma.models import create_model, list_models, load_weights


def n_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def n_bn_stats(model):
    return sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))


def test_seed_densenet_matches_the_notebook_keras_summary():
    model = create_model("seed-densenet")
    assert n_trainable(model) == 981_658
    assert n_bn_stats(model) == 13_572
    assert n_trainable(model) + n_bn_stats(model) == 995_230


def test_seed_densenet_gray_first_conv_of_20_filters_matches_the_merged_notebook_model():
    # The notebook's merged model: first conv 1 -> 20 channels, 962,214 parameters in all.
    model = create_model("seed-densenet", in_chans=1, stem_channels=20)
    assert n_trainable(model) + n_bn_stats(model) == 962_214


@pytest.mark.parametrize("name,expected", [
    ("resnet-cifar-20", 269_722), ("resnet-cifar-32", 464_154), ("resnet-cifar-44", 658_586),
    ("resnet-cifar-56", 853_018), ("resnet-cifar-110", 1_727_962), ("densenet-bc-100", 769_162),
])
def test_parameter_counts_of_the_cifar_families(name, expected):
    assert n_trainable(create_model(name)) == expected


@pytest.mark.parametrize("name", [n for n in list_models() if n != "seed-densenet"] + ["tv:resnet18"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_model_classifies_small_images(name, in_chans):
    model = create_model(name, in_chans=in_chans, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, 32, 32))
    assert out.shape == (2, 7)
    assert model.achroma_arch == {"name": name, "in_chans": in_chans, "num_classes": 7}


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="resnet-cifar-20"):
        create_model("resnet-cifar-21")
    with pytest.raises(ValueError, match="torchvision"):
        create_model("tv:not_a_model")


def test_resnet_state_dict_layout_is_the_shared_checkpoints_layout():
    keys = set(create_model("resnet-cifar-20").state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer3.2.bn2.bias", "linear.weight",
            "linear.bias"} <= keys
    assert not any("shortcut" in k for k in keys)


@pytest.mark.parametrize("wrap", ["state_dict", "bare"])
def test_foreign_resnet_checkpoint_with_module_prefix_loads_with_identical_outputs(tmp_path, wrap):
    torch.manual_seed(0)
    source = create_model("resnet-cifar-20").eval()
    with torch.no_grad():  # make BN statistics non-trivial so a bad load would show
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "resnet20-12fca82f.th"
    torch.save({"state_dict": state, "best_prec1": 91.7} if wrap == "state_dict" else state, path)
    target = load_weights(create_model("resnet-cifar-20"), path).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_weights_that_do_not_fit_say_which_keys(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(create_model("resnet-cifar-20").state_dict(), path)
    with pytest.raises(ValueError, match="missing"):
        load_weights(create_model("resnet-cifar-32"), path)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_weights(create_model("resnet-cifar-20", num_classes=100), path)


def test_corrupt_or_missing_weights_give_clear_errors(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"\x80\x04 definitely not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights"):
        load_weights(create_model("resnet-cifar-20"), bad)
    with pytest.raises(FileNotFoundError):
        load_weights(create_model("resnet-cifar-20"), tmp_path / "absent.pth")
