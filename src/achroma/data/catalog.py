"""Find a data set by name in the data folders, decode it once into a uint8 cache, download if asked.

Data folders, searched in order: `data_dir` if given, `$ACHROMA_DATA_DIR`, `./data`, and
`../shared/datasets` (where these offline machines keep real copies). The decoded cache lives
in `$ACHROMA_CACHE_DIR` (default `~/.cache/achroma`).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .dataset import ImageDataset
from . import readers

DISPLAY_NAMES = {
    "cifar10-jpeg": "CIFAR-10 (JPEG)",
    "cifar10": "CIFAR-10",
    "fashion-mnist": "Fashion-MNIST",
    "pneumoniamnist": "PneumoniaMNIST",
}
DATASETS = ("cifar10", "fashion-mnist", "pneumoniamnist", "folder:<path>")
MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{flag}.npz?download=1"


def known_caveats(dataset: ImageDataset) -> list[str]:
    """What is known to be odd about the copy this data set was loaded from (subsets keep the notes),
    said in every report that uses it."""
    return list(dataset.extra.get("caveats", []))


def _caveats(kind: str, split: str, n: int) -> list[str]:
    notes = []
    if kind == "pneumoniamnist" and split == "train" and n == 3882:
        notes.append("this PneumoniaMNIST training split is partial: 3,882 of the official 4,708 images; the "
                     "826 missing are all of class 'normal', so 'pneumonia' is over-represented in training "
                     "(validation and test splits are the official ones)")
    if kind == "cifar10-jpeg":
        notes.append("CIFAR-10 (JPEG): a JPEG-compressed copy, harder than the original files")
    return notes


def data_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for data sets, most specific first."""
    dirs = [data_dir, os.environ.get("ACHROMA_DATA_DIR"), "data", Path.cwd().parent / "shared" / "datasets"]
    return [Path(d).expanduser() for d in dirs if d]


def cache_dir() -> Path:
    return Path(os.environ.get("ACHROMA_CACHE_DIR", Path.home() / ".cache" / "achroma")).expanduser()


def _fingerprint(path: Path) -> str:
    """Identify a source by path, size and modification time (cheap; changes when the file does)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _cached(source: Path, tag: str, read: Callable[[], tuple[readers.Splits, list[str]]]):
    """Decode `source` once with `read` and keep the uint8 arrays in the cache folder."""
    path = cache_dir() / f"{tag}-{_fingerprint(source)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                classes = [str(c) for c in npz["classes"]]
                splits = {k[:-7]: (npz[k], npz[k[:-7] + "_labels"]) for k in npz.files if k.endswith("_images")}
            return splits, classes
        except Exception:  # a broken cache is rebuilt, never trusted
            path.unlink(missing_ok=True)
    splits, classes = read()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"classes": np.array(classes)}
    for split, (images, labels) in splits.items():
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return splits, classes


def _locate_cifar10(dirs: list[Path]) -> tuple[str, Path] | None:
    for d in dirs:
        for kind, candidate in (("cifar10-jpeg", d / "cifar10-jpeg.tar.gz"), ("cifar10", d / "cifar-10-batches-py"),
                                ("folder", d / "cifar10")):
            if candidate.exists():
                return kind, candidate
    return None


def _read_cifar10(dirs: list[Path], download: bool):
    found = _locate_cifar10(dirs)
    if found is None and download:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(dirs[0]), download=True)
        found = ("cifar10", dirs[0] / "cifar-10-batches-py")
    if found is None:
        raise _missing("cifar10", dirs, "cifar10-jpeg.tar.gz, cifar-10-batches-py/ or cifar10/{train,test}/<class>/")
    kind, path = found
    if kind == "cifar10-jpeg":
        return kind, path, _cached(path, kind, lambda: readers.read_jpeg_tar(path))
    if kind == "cifar10":
        return kind, path, readers.read_cifar_batches(path.parent)
    return kind, path, _cached(path, "folder", lambda: readers.read_image_folder(path))


def _read_fashion(dirs: list[Path], download: bool):
    for d in dirs:
        for folder in (d / "fashion-mnist", d / "FashionMNIST" / "raw"):
            if folder.is_dir():
                return "fashion-mnist", folder, readers.read_mnist_idx(folder, readers.FASHION_CLASSES)
    if download:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(dirs[0]), download=True)
        folder = dirs[0] / "FashionMNIST" / "raw"
        return "fashion-mnist", folder, readers.read_mnist_idx(folder, readers.FASHION_CLASSES)
    raise _missing("fashion-mnist", dirs, "fashion-mnist/*-ubyte.gz or FashionMNIST/raw/")


def _read_medmnist(flag: str, dirs: list[Path], download: bool):
    for d in dirs:
        if (d / f"{flag}.npz").is_file():
            path = d / f"{flag}.npz"
            return flag, path, readers.read_medmnist_npz(path)
    if download:
        from torchvision.datasets.utils import download_url

        download_url(MEDMNIST_URL.format(flag=flag), str(dirs[0]), filename=f"{flag}.npz")
        path = dirs[0] / f"{flag}.npz"
        return flag, path, readers.read_medmnist_npz(path)
    raise _missing(flag, dirs, f"{flag}.npz")


def _missing(name: str, dirs: list[Path], expected: str) -> FileNotFoundError:
    searched = ", ".join(str(d) for d in dirs)
    return FileNotFoundError(
        f"data set {name!r} not found: looked for {expected} in {searched}. "
        f"Pass --data-dir (or set ACHROMA_DATA_DIR) to the folder holding it, or add --download "
        f"on a machine with a network."
    )


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None,
                 download: bool = False) -> ImageDataset:
    """Load one split of a data set by name (`cifar10`, `fashion-mnist`, `pneumoniamnist` or any MedMNIST
    flag, `folder:<path>` or `tar:<path>` for your own `train/<class>/*` data) as a uint8 ImageDataset."""
    dirs = data_dirs(data_dir)
    if name.startswith(("folder:", "tar:")):
        kind, _, raw = name.partition(":")
        path = Path(raw).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data set path not found: {path}")
        read = readers.read_image_folder if kind == "folder" else readers.read_jpeg_tar
        source = (kind, path, _cached(path, kind, lambda: read(path)))
    elif name in ("cifar10", "cifar-10"):
        source = _read_cifar10(dirs, download)
    elif name in ("fashion-mnist", "fashionmnist"):
        source = _read_fashion(dirs, download)
    elif name.endswith("mnist"):
        source = _read_medmnist(name, dirs, download)
    else:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    kind, path, (splits, classes) = source
    if split not in splits:
        raise ValueError(f"data set {name!r} has no split {split!r}; it has {', '.join(sorted(splits))}")
    images, labels = splits[split]
    tensor = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).contiguous()
    return ImageDataset(tensor, torch.from_numpy(np.asarray(labels)), classes, name=name, split=split,
                        source=str(path), extra={"kind": kind, "display_name": DISPLAY_NAMES.get(kind, name),
                                                 "caveats": _caveats(kind, split, len(labels))})
