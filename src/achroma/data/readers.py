"""Readers for the on-disk formats: JPEG archives, ImageFolder trees, torchvision CIFAR, IDX, MedMNIST.

Each reader returns `{split: (images uint8 (N, H, W, C), labels int64 (N,))}` plus class names,
and knows nothing about caching or modes.
"""
from __future__ import annotations

import gzip
import io
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
from ..progress import progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
Splits = dict[str, tuple[np.ndarray, np.ndarray]]
_SPLIT_PATH = re.compile(r"(?:^|/)(train|test|val)/([^/]+)/[^/]+$")


def _decode(data: bytes | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        arr = np.asarray(img.convert("L") if img.mode in ("L", "I", "I;16", "1") else img.convert("RGB"))
    return arr[..., None] if arr.ndim == 2 else arr


def _stack(items: list[tuple[str, str, np.ndarray]], classes: list[str], where: str) -> tuple[np.ndarray, np.ndarray]:
    shapes = {img.shape for _, _, img in items}
    if len(shapes) != 1:
        raise ValueError(f"images in {where} differ in size or channels ({sorted(shapes)[:3]}...); resize them first")
    index = {c: i for i, c in enumerate(classes)}
    images = np.stack([img for _, _, img in items])
    labels = np.array([index[c] for _, c, _ in items], dtype=np.int64)
    return images, labels


def read_split_tree(entries: list[tuple[str, str, str, bytes | Path]], where: str) -> tuple[Splits, list[str]]:
    """Decode (split, class, key, data) entries into per-split arrays; classes sorted by name."""
    if not entries:
        raise ValueError(f"no images found under {where} (expected train/<class>/*.jpg and test/<class>/*.jpg)")
    classes = sorted({c for _, c, _, _ in entries})
    per_split: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    for split, cls, key, data in progress(sorted(entries, key=lambda e: (e[0], e[1], e[2])),
                                          desc=f"decoding {Path(where).name}"):
        try:
            per_split.setdefault(split, []).append((key, cls, _decode(data)))
        except Exception as err:
            raise ValueError(f"corrupt image {key} in {where}: {err}") from err
    return {s: _stack(items, classes, where) for s, items in per_split.items()}, classes


def read_jpeg_tar(path: Path) -> tuple[Splits, list[str]]:
    """A tar(.gz) of `train/<class>/*.jpg` and `test/<class>/*.jpg` (the CIFAR-10 (JPEG) layout)."""
    entries = []
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                m = _SPLIT_PATH.search(member.name)
                if member.isfile() and m and member.name.lower().endswith(IMAGE_SUFFIXES):
                    entries.append((m.group(1), m.group(2), member.name, tar.extractfile(member).read()))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ValueError(f"cannot read archive {path}: {err}") from err
    return read_split_tree(entries, str(path))


def read_image_folder(root: Path) -> tuple[Splits, list[str]]:
    """A folder `root/{train,test}/<class>/<image>` (ImageFolder style, how users bring their own data)."""
    entries = [
        (p.parent.parent.name, p.parent.name, str(p.relative_to(root)), p)
        for split in ("train", "test", "val") if (root / split).is_dir()
        for p in (root / split).glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    return read_split_tree(entries, str(root))


def read_cifar_batches(root: Path) -> tuple[Splits, list[str]]:
    """torchvision's CIFAR-10 layout (`cifar-10-batches-py/`), downloaded by torchvision if asked."""
    from torchvision.datasets import CIFAR10

    splits = {}
    for split in ("train", "test"):
        ds = CIFAR10(str(root), train=split == "train", download=False)
        splits[split] = (np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64))
    return splits, list(ds.classes)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format), gzipped or not, as a uint8/int array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, EOFError, struct.error, ValueError) as err:
        raise ValueError(f"cannot read IDX file {path}: {err}") from err


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def read_mnist_idx(folder: Path, classes: list[str]) -> tuple[Splits, list[str]]:
    """MNIST-format IDX files: `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` in `folder`."""
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        files = {}
        for kind, stem in (("images", f"{prefix}-images-idx3-ubyte"), ("labels", f"{prefix}-labels-idx1-ubyte")):
            candidates = [folder / f"{stem}.gz", folder / stem]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise FileNotFoundError(f"missing {stem}(.gz) in {folder}")
            files[kind] = read_idx(found)
        splits[split] = (files["images"][..., None], files["labels"].astype(np.int64))
    return splits, classes


MEDMNIST_CLASSES = {"pneumoniamnist": ["normal", "pneumonia"]}


def read_medmnist_npz(path: Path) -> tuple[Splits, list[str]]:
    """MedMNIST's own `.npz` (keys `{train,val,test}_{images,labels}`)."""
    try:
        with np.load(path) as npz:
            splits = {}
            for split in ("train", "val", "test"):
                images = npz[f"{split}_images"]
                labels = npz[f"{split}_labels"].reshape(-1).astype(np.int64)
                splits[split] = (images[..., None] if images.ndim == 3 else images, labels)
    except (OSError, KeyError, ValueError, EOFError) as err:
        raise ValueError(f"cannot read MedMNIST file {path}: {err}") from err
    n_classes = int(max(labels.max() for _, labels in splits.values())) + 1
    classes = MEDMNIST_CLASSES.get(path.stem, [str(i) for i in range(n_classes)])
    return splits, classes
