"""Datasets held whole on the training device as uint8 tensors: where the files are looked for, how
they are downloaded, and the standardisation applied to every batch.

    data = load_dataset("fashion_mnist", "data", device="cuda")   # also finds Debian's copy offline
    x, y = data.normalize(data.train_x[idx]), data.train_y[idx]

The files are parsed by bn_repro/data/readers.py, so that loading is a decompress, a hash and one copy
to the device; torchvision is used only to download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import shutil
import socket
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bn_repro.data.catalog import DATASETS
from bn_repro.data.readers import (
    DatasetFormatError,
    make_synthetic,
    parse_cifar_batch,
    read_idx,
)

log = logging.getLogger(__name__)


IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# torchvision downloads into root/<class name>/raw; the same folder names let both share one data root.
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
# Folders searched after data.root: Debian's dataset-fashion-mnist package installs the .gz files here.
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "mnist": (),
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TARBALL = "cifar-10-python.tar.gz"
CIFAR_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")

OFFLINE_HINT = (
    "Offline, data=fashion_mnist reads Debian's copy (apt-get install dataset-fashion-mnist, "
    "files in /usr/share/datasets/fashion-mnist), and data=synthetic needs no files."
)


class DatasetUnavailableError(RuntimeError):
    """The dataset's files are not on this machine and could not be downloaded."""


@dataclass(eq=False)  # field-wise == on tensors has no single truth value
class DeviceDataset:
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    num_classes: int
    checksum: str
    source: str
    _scale: torch.Tensor = field(init=False, repr=False)
    _shift: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # (x/255 - mean)/std folded into one multiply-add per pixel for the per-step hot path.
        channels = (-1, 1, 1)
        self._scale = (1.0 / (255.0 * self.std)).view(channels)
        self._shift = (-self.mean / self.std).view(channels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """float32 (x/255 - mean)/std per channel; shape and device kept."""
        if x_uint8.dtype != torch.uint8:
            # A float input is most likely already normalized; normalizing twice would go unnoticed.
            raise TypeError(f"normalize expects uint8 pixels, got {x_uint8.dtype}")
        return torch.addcmul(self._shift, x_uint8, self._scale)


def load_dataset(
    name: str,
    root: str | Path,
    device: torch.device | str = "cpu",
    download: bool = True,
    download_timeout_s: float = 20.0,
    synthetic: dict | None = None,
) -> DeviceDataset:
    """Read (or generate) `name` and place all of it on `device`.

    mnist/fashion_mnist are looked for in root/<MNIST|FashionMNIST>/raw, then root, then
    SYSTEM_DATA_DIRS; cifar10 in root/cifar-10-batches-py (extracted from root/cifar-10-python.tar.gz
    if only that is there). Missing files are downloaded with torchvision when `download` is set.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    device = torch.device(device)
    root = Path(root).expanduser()
    started = time.perf_counter()
    if name == "synthetic":
        arrays, num_classes, checksum, source = make_synthetic(synthetic or {})
    elif name == "cifar10":
        arrays, checksum, source = _load_cifar10(root, download, download_timeout_s)
        num_classes = 10
    else:
        arrays, checksum, source = _load_idx_dataset(name, root, download, download_timeout_s)
        num_classes = 10
    train_x, train_y, test_x, test_y = arrays
    for split, labels in (("train", train_y), ("test", test_y)):
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise DatasetFormatError(
                f"{name} ({source}): {split} labels span [{int(labels.min())}, {int(labels.max())}], "
                f"outside [0, {num_classes - 1}]"
            )
    mean, std = _channel_mean_std(train_x)
    data = DeviceDataset(
        name=name,
        train_x=_to_device(train_x, device),
        train_y=_to_device(train_y, device),
        test_x=_to_device(test_x, device),
        test_y=_to_device(test_y, device),
        mean=_to_device(mean, device),
        std=_to_device(std, device),
        num_classes=num_classes,
        checksum=checksum,
        source=source,
    )
    log.info(
        "%s: %d train + %d test examples of %s from %s in %.2f s",
        name, len(train_y), len(test_y), data.input_shape, source, time.perf_counter() - started,
    )  # fmt: skip
    return data


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        # From pinned memory the copy is asynchronous: the host pins the next split while this one copies.
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _channel_mean_std(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of uint8 images in [0, 1] scale, from exact pixel counts."""
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        # A 256-bin histogram is exact and needs no float64 copy of the whole set.
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        total = counts.sum()
        mean = (counts * values).sum() / total
        var = (counts * (values - mean) ** 2).sum() / total
        if var == 0:
            raise DatasetFormatError(f"channel {c} of the train images is constant; cannot standardize it")
        means.append(mean / 255.0)
        stds.append(var.sqrt() / 255.0)
    return torch.stack(means).float(), torch.stack(stds).float()


# ---------------------------------------------------------------- MNIST and Fashion-MNIST (IDX files)


def _idx_search_dirs(name: str, root: Path) -> list[Path]:
    return [root / TORCHVISION_FOLDERS[name] / "raw", root, *SYSTEM_DATA_DIRS.get(name, ())]


def _find_in_dir(directory: Path, filenames) -> tuple[list[Path], list[str]]:
    """The files present in `directory` (raw before .gz: it skips decompression), and the names missing."""
    found, missing = [], []
    for filename in filenames:
        for candidate in (directory / filename, directory / f"{filename}.gz"):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            missing.append(filename)
    return found, missing


def _find_idx_files(name: str, root: Path) -> tuple[list[Path] | None, list[str]]:
    """The four IDX files from the first folder that holds all of them, or None; and a line per folder."""
    report = []
    for directory in _idx_search_dirs(name, root):
        found, missing = _find_in_dir(directory, IDX_FILES.values())
        if not missing:
            return found, report
        status = "not there" if not directory.is_dir() else f"missing {', '.join(missing)}"
        report.append(f"  {directory} ({status})")
    return None, report


def _load_idx_dataset(name: str, root: Path, download: bool, timeout_s: float):
    paths, report = _find_idx_files(name, root)
    if paths is None:
        reason = _download_or_reason(name, root, download, timeout_s)
        if reason is None:
            paths, report = _find_idx_files(name, root)
            reason = "torchvision's download finished but the files are still not where expected"
        if paths is None:
            wanted = ", ".join(f"{f}[.gz]" for f in IDX_FILES.values())
            raise DatasetUnavailableError(
                f"dataset {name!r} is not available: {reason}.\n"
                f"Looked for {wanted} in:\n" + "\n".join(report) + "\n"
                f"Put the four files (raw or .gz) in {root / TORCHVISION_FOLDERS[name] / 'raw'} or {root}, "
                f"or point data.root (env BN_REPRO_DATA) at the folder holding them.\n{OFFLINE_HINT}"
            )
    hasher = hashlib.sha256()
    arrays = {}
    for key, path in zip(IDX_FILES, paths, strict=True):
        array, file_bytes = read_idx(path, ndim=3 if key.endswith("images") else 1)
        hasher.update(file_bytes)
        arrays[key] = array
    splits = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DatasetFormatError(
                f"{paths[0].parent}: {split} has {len(images)} images but {len(labels)} labels"
            )
        # .copy(): the decompressed bytes are read-only, and the CPU-device tensors must own their memory.
        splits.append(torch.from_numpy(images[:, None].copy()))
        splits.append(torch.from_numpy(labels.astype(np.int64)))
    return tuple(splits), hasher.hexdigest(), str(paths[0].parent)


def _download_or_reason(name: str, root: Path, download: bool, timeout_s: float) -> str | None:
    """Download `name` with torchvision; None on success, else why not (for the error message)."""
    if not download:
        return "the files are missing and downloading is off (data.download=false)"
    try:
        _torchvision_download(name, root, timeout_s)
    except Exception as err:  # any failure (network, disk, checksum) ends in the same actionable message
        return f"the download failed ({type(err).__name__}: {err})"
    return None


def _torchvision_download(name: str, root: Path, timeout_s: float) -> None:
    from torchvision import datasets

    dataset_class = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST,
                     "cifar10": datasets.CIFAR10}[name]  # fmt: skip
    previous = socket.getdefaulttimeout()
    # urllib has no timeout of its own here; without one an offline machine can hang on connect.
    socket.setdefaulttimeout(timeout_s)
    try:
        # One construction fetches every split's files; train=True only picks which split it then parses.
        dataset_class(str(root), train=True, download=True)
    finally:
        socket.setdefaulttimeout(previous)


# ---------------------------------------------------------------- CIFAR-10 (pickled batches)


def _load_cifar10(root: Path, download: bool, timeout_s: float):
    batch_dir = root / CIFAR_DIR
    tarball = root / CIFAR_TARBALL
    found, missing = _find_in_dir_exact(batch_dir, CIFAR_BATCHES)
    if missing and tarball.is_file():
        _extract_cifar_tarball(tarball, root)
        found, missing = _find_in_dir_exact(batch_dir, CIFAR_BATCHES)
    if missing:
        reason = _download_or_reason("cifar10", root, download, timeout_s)
        found, missing = _find_in_dir_exact(batch_dir, CIFAR_BATCHES)
        if missing:
            raise DatasetUnavailableError(
                f"dataset 'cifar10' is not available: "
                f"{reason or 'the download finished but the batches are still missing'}.\n"
                f"Looked for {', '.join(CIFAR_BATCHES)} in {batch_dir} (missing {', '.join(missing)}) "
                f"and for {tarball}.\n"
                f"Put {CIFAR_TARBALL} (from https://www.cs.toronto.edu/~kriz/cifar.html) in {root}, "
                f"or point data.root (env BN_REPRO_DATA) at the folder holding it.\n{OFFLINE_HINT}"
            )
    hasher = hashlib.sha256()
    parts = []
    for path in found:
        file_bytes = path.read_bytes()
        hasher.update(file_bytes)
        parts.append(parse_cifar_batch(path, file_bytes))
    train_x = torch.from_numpy(np.concatenate([x for x, _ in parts[:-1]]))
    train_y = torch.from_numpy(np.concatenate([y for _, y in parts[:-1]]))
    test_x, test_y = (torch.from_numpy(a) for a in parts[-1])
    return (train_x, train_y, test_x, test_y), hasher.hexdigest(), str(batch_dir)


def _find_in_dir_exact(directory: Path, filenames) -> tuple[list[Path], list[str]]:
    paths = [directory / f for f in filenames]
    return paths, [p.name for p in paths if not p.is_file()]


def _extract_cifar_tarball(tarball: Path, root: Path) -> None:
    """Extract the batch files only, to names built here (the archive's paths are never trusted)."""
    wanted = {f"{CIFAR_DIR}/{f}" for f in (*CIFAR_BATCHES, "batches.meta")}
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive:
                name = posixpath.normpath(member.name)
                if name not in wanted or not member.isfile():
                    continue
                destination = root.joinpath(*name.split("/"))
                destination.parent.mkdir(parents=True, exist_ok=True)
                partial = destination.with_name(destination.name + ".partial")
                source = archive.extractfile(member)
                with source, open(partial, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                # An interrupted extraction leaves no truncated batch that would later read as corrupt.
                os.replace(partial, destination)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DatasetFormatError(f"{tarball}: cannot extract the CIFAR-10 batches ({err})") from err
