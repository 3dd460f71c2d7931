"""Data: readers, the gray modes, normalization, augmentation and batching."""
from __future__ import annotations

import gzip
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from achroma.data import (BatchLoader, ImageDataset, Normalization, apply_mode, get_normalization, load_dataset,
                          random_crop_flip, to_luma)

from conftest import requires_data


def random_dataset(n=40, channels=3, size=8, classes=4, seed=0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    return ImageDataset(images, labels, [f"c{i}" for i in range(classes)], name="random")


def test_gray_modes_equal_the_luma_formula():
    x = torch.rand(5, 3, 6, 6)
    expected = 0.2989 * x[:, 0] + 0.5870 * x[:, 1] + 0.1140 * x[:, 2]
    gray = apply_mode(x, "gray")
    assert gray.shape == (5, 1, 6, 6)
    torch.testing.assert_close(gray[:, 0], expected)
    gray3 = apply_mode(x, "gray3")
    assert gray3.shape == (5, 3, 6, 6)
    for c in range(3):
        torch.testing.assert_close(gray3[:, c], expected)
    assert torch.equal(apply_mode(x, "color"), x)


def test_loader_gray_batches_are_luma_of_the_uint8_images_normalized():
    ds = random_dataset()
    x, _ = next(iter(BatchLoader(ds, batch_size=8, mode="gray", normalize="cifar")))
    raw = ds.images[:8].float() / 255
    luma = 0.2989 * raw[:, 0] + 0.5870 * raw[:, 1] + 0.1140 * raw[:, 2]
    norm = get_normalization("cifar").for_channels(1)
    torch.testing.assert_close(x[:, 0], (luma - norm.mean[0]) / norm.std[0])


def test_grayscale_data_sets_need_a_gray_mode():
    ds = random_dataset(channels=1)
    with pytest.raises(ValueError, match="gray3"):
        BatchLoader(ds, mode="color")
    x, _ = next(iter(BatchLoader(ds, batch_size=4, mode="gray3")))
    assert x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 2])


def test_normalization_presets_and_custom():
    x = torch.full((1, 3, 2, 2), 0.5)
    out = get_normalization("0.5,0.5,0.5:0.25,0.25,0.25")(x)
    assert torch.equal(out, torch.zeros_like(out))
    assert get_normalization("none")(x).equal(x)
    assert get_normalization({"mean": [0.1], "std": [2.0]}) == Normalization((0.1,), (2.0,))
    for bad in ("nope", "1,2:3", "0.5:0"):
        with pytest.raises(ValueError):
            get_normalization(bad)


def test_crop_with_no_shift_and_flip_are_exact():
    x = torch.rand(64, 3, 8, 8)
    out = random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(1))
    flipped = torch.tensor([not torch.equal(o, i) for o, i in zip(out, x)])
    assert 10 < flipped.sum() < 54  # about half are flipped
    assert torch.equal(out[flipped], x[flipped].flip(3)) and torch.equal(out[~flipped], x[~flipped])


def test_crop_shifts_content_and_pads_with_zeros():
    x = torch.ones(256, 1, 8, 8)
    out = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert out.mean() < 1.0  # some zero padding came in


def test_distributed_shards_are_disjoint_and_cover_the_epoch():
    ds = random_dataset(n=40)
    ds.labels = torch.arange(40)  # labels identify the images
    seen = []
    for rank in range(2):
        loader = BatchLoader(ds, batch_size=7, shuffle=True, seed=3, rank=rank, world_size=2)
        seen.append(torch.cat([y for _, y in loader]))
    assert len(seen[0]) == len(seen[1]) == 20
    assert sorted(torch.cat(seen).tolist()) == list(range(40))


def test_shuffle_is_deterministic_for_a_seed_and_changes_by_epoch():
    ds = random_dataset()
    a = BatchLoader(ds, batch_size=40, shuffle=True, seed=1)
    first = next(iter(a))[0]
    assert torch.equal(first, next(iter(BatchLoader(ds, batch_size=40, shuffle=True, seed=1)))[0])
    a.set_epoch(1)
    assert not torch.equal(first, next(iter(a))[0])


def _write_tree(root, splits=("train", "test"), classes=("cat", "dog"), per_class=3, size=5, mode="RGB"):
    rng = np.random.default_rng(0)
    for split in splits:
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                shape = (size, size, 3) if mode == "RGB" else (size, size)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / split / cls / f"{i}.png")


def test_image_folder_and_tar_archives_read_the_same(tmp_path):
    _write_tree(tmp_path / "tree")
    with tarfile.open(tmp_path / "data.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="archive")
    a = load_dataset(f"folder:{tmp_path / 'tree'}", "train")
    b = load_dataset(f"tar:{tmp_path / 'data.tar.gz'}", "train")
    assert a.images.shape == (6, 3, 5, 5) and a.classes == ["cat", "dog"]
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    again = load_dataset(f"folder:{tmp_path / 'tree'}", "train")  # second time: from the cache
    assert torch.equal(a.images, again.images)


def test_corrupt_image_and_missing_data_name_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so that ./data and ../shared/datasets hold nothing
    monkeypatch.delenv("ACHROMA_DATA_DIR", raising=False)
    _write_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "cat" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="0.png"):
        load_dataset(f"folder:{tmp_path / 'tree'}", "train")
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_dataset("fashion-mnist", "train", data_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("imagenet-22k", "train")


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_and_medmnist_formats(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    ds = load_dataset("fashion-mnist", "test", data_dir=tmp_path)
    assert ds.images.shape == (4, 1, 28, 28) and ds.labels.tolist() == [0, 1, 2, 3]
    arrays = {f"{s}_{k}": (rng.integers(0, 256, (3, 28, 28)) if k == "images" else np.array([[0], [1], [1]]))
              for s in ("train", "val", "test") for k in ("images", "labels")}
    np.savez(tmp_path / "pneumoniamnist.npz", **{k: v.astype(np.uint8) for k, v in arrays.items()})
    ds = load_dataset("pneumoniamnist", "val", data_dir=tmp_path)
    assert ds.classes == ["normal", "pneumonia"] and ds.labels.tolist() == [0, 1, 1]


@requires_data
def test_real_cifar10_jpeg(data_dir):
    train = load_dataset("cifar10", "train", data_dir)
    test = load_dataset("cifar10", "test", data_dir)
    assert train.images.shape == (50_000, 3, 32, 32) and len(test) == 10_000
    assert train.extra["display_name"] == "CIFAR-10 (JPEG)"
    assert test.labels.bincount().tolist() == [1000] * 10
    assert test.classes[:2] == ["airplane", "automobile"]


@requires_data
def test_real_grayscale_sets(data_dir):
    fashion = load_dataset("fashion-mnist", "train", data_dir)
    assert fashion.images.shape == (60_000, 1, 28, 28)
    sizes = [len(load_dataset("pneumoniamnist", s, data_dir)) for s in ("train", "val", "test")]
    assert sizes == [3_882, 524, 624]


def test_to_luma_keeps_a_gray_image_gray():
    x = torch.rand(2, 1, 4, 4).expand(-1, 3, -1, -1)
    torch.testing.assert_close(to_luma(x), x[:, :1], atol=1e-3, rtol=0)  # weights sum to 0.9999


def test_a_stratified_split_is_the_subset_and_the_disjoint_rest():
    data = random_dataset(n=40, classes=4)
    picked, rest = data.stratified_split(3, seed=1)
    assert torch.equal(picked.images, data.stratified_subset(3, seed=1).images)
    assert len(picked) + len(rest) == len(data) and picked.labels.bincount().tolist() == [3, 3, 3, 3]
    together = torch.cat([picked.images, rest.images]).flatten(1)
    assert len({tuple(row.tolist()) for row in together}) == len(data)  # no image in both, none lost
