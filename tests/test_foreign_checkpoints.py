"""Checkpoints shaped like the third-party files people hold, built here the way their code wrote them."""
from __future__ import annotations

import pickle

import pytest
import torch

from achroma.models import create_model, load_weights


def _trained_like(name: str = "resnet-cifar-20") -> torch.nn.Module:
    """A model with non-trivial BN statistics, so that a wrong load shows in the outputs."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _old_pytorch_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What `state_dict()` held before PyTorch 0.4.1: no BatchNorm `num_batches_tracked` buffers."""
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> bool:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=atol, rtol=0)


def test_file_without_num_batches_tracked_loads_as_pytorch_loads_it(tmp_path):
    source = _trained_like()
    state = _old_pytorch_state(source)
    assert not any(k.endswith("num_batches_tracked") for k in state)
    path = tmp_path / "resnet20-12fca82f.th"
    # The shared CIFAR ResNet files: DataParallel prefix, a wrapper dict, the legacy (pre-1.6) format.
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "best_prec1": 91.73, "epoch": 200},
               path, _use_new_zipfile_serialization=False)
    target = load_weights(create_model("resnet-cifar-20"), path)
    assert _same_outputs(source, target)
    assert all(int(b) == 0 for k, b in target.state_dict().items() if k.endswith("num_batches_tracked"))
    reference = create_model("resnet-cifar-20")
    reference.load_state_dict(state)  # PyTorch's own loader accepts the same file the same way
    assert _same_outputs(reference, target)


def test_only_num_batches_tracked_may_be_missing(tmp_path):
    state = _old_pytorch_state(_trained_like())
    del state["layer2.1.bn1.running_var"]
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing \(1\): layer2.1.bn1.running_var"):
        load_weights(create_model("resnet-cifar-20"), path)


def test_lightning_style_checkpoint_with_model_prefix(tmp_path):
    source = _trained_like()
    path = tmp_path / "epoch=9-step=100.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
                "epoch": 9, "global_step": 100, "pytorch-lightning_version": "2.1.0",
                "hyper_parameters": {"lr": 0.1}}, path)
    assert _same_outputs(source, load_weights(create_model("resnet-cifar-20"), path))


def test_half_precision_file_loads_into_a_float32_model(tmp_path):
    source = _trained_like()
    path = tmp_path / "half.pth"
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in source.state_dict().items()}, path)
    target = load_weights(create_model("resnet-cifar-20"), path)
    assert next(target.parameters()).dtype == torch.float32
    assert _same_outputs(source.half().float(), target)


def test_tensors_saved_on_a_gpu_load_on_a_cpu_only_machine(tmp_path):
    source = _trained_like()
    path = tmp_path / "cuda.pth"
    # Write the file as it comes from a GPU machine: every storage tagged 'cuda:0'.
    torch.serialization.register_package(-100, lambda obj: "cuda:0", lambda obj, loc: None)
    try:
        torch.save(source.state_dict(), path)
    finally:
        torch.serialization._package_registry[:] = [
            entry for entry in torch.serialization._package_registry if entry[0] != -100]
    assert b"cuda:0" in path.read_bytes()
    assert _same_outputs(source, load_weights(create_model("resnet-cifar-20"), path))


def test_densenet_file_from_old_pytorch_loads(tmp_path):
    source = _trained_like("densenet-bc-100")
    path = tmp_path / "densenet.pth.tar"
    torch.save({"state_dict": _old_pytorch_state(source), "arch": "densenet"}, path,
               _use_new_zipfile_serialization=False)
    assert _same_outputs(source, load_weights(create_model("densenet-bc-100"), path))


def test_a_pickled_payload_is_refused_not_run(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(ValueError, match="cannot read weights"):
        load_weights(create_model("resnet-cifar-20"), path)
