"""Datasets held whole on the training device as uint8 tensors: where the files are looked for, how
they are downloaded, and the standardisation applied to every batch.

    data = load_dataset("fashion_mnist", "data", device="cuda")   # also finds Debian's copy offline
    x, y = data.normalize(data.train_x[idx]), data.train_y[idx]

The files are parsed by bn_repro/data/readers.py, so that loading is a decompress, a hash and one copy
to the device; torchvision is used only to download. Whatever stops a data set from loading (no files,
data.root a file, a failed download, a damaged file) is a DataError (bn_repro/data/errors.py): one
line that names the data set, where it was looked for and what to do.

Where the files are looked for: in data.root, and only with the default data.root (configs/data/*.yaml:
`data`, BN_REPRO_DATA unset) also in copies installed on the machine (SYSTEM_DATA_DIRS: Debian's
Fashion-MNIST). A root the user names (data.root=DIR or BN_REPRO_DATA=DIR) is the only place read, so
a wrong one is reported, not silently replaced by another copy.
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
from bn_repro.data.errors import (
    SOURCES,
    TITLES,
    DataError,
    DatasetFormatError,
    DatasetUnavailableError,
    brief_reason,
    one_line,
)
from bn_repro.data.readers import make_synthetic, parse_cifar_batch, read_file, read_idx

log = logging.getLogger(__name__)


IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# torchvision downloads into root/<class name>/raw; the same folder names let both share one data root.
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
# Folders searched after the default data.root: Debian's dataset-fashion-mnist package installs the .gz
# files here.
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "mnist": (),
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}
DEBIAN_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}
# data.root's default in configs/data/*.yaml is ${oc.env:BN_REPRO_DATA,data}.
DEFAULT_ROOT = Path("data")
ROOT_ENV = "BN_REPRO_DATA"

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TARBALL = "cifar-10-python.tar.gz"
CIFAR_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def is_default_root(root: str | Path) -> bool:
    """Whether `root` is data.root's default (`data`, with BN_REPRO_DATA unset): only then are the
    copies installed on the machine (SYSTEM_DATA_DIRS) searched too."""
    return not os.environ.get(ROOT_ENV) and Path(root).expanduser() == DEFAULT_ROOT


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

    def normalize(self, x_uint8: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """float32 (x/255 - mean)/std per channel; shape and device kept; written into `out` if given."""
        if x_uint8.dtype != torch.uint8:
            # A float input is most likely already normalized; normalizing twice would go unnoticed.
            raise TypeError(f"normalize expects uint8 pixels, got {x_uint8.dtype}")
        return torch.addcmul(self._shift, x_uint8, self._scale, out=out)


def load_dataset(
    name: str,
    root: str | Path,
    device: torch.device | str = "cpu",
    download: bool = True,
    download_timeout_s: float = 20.0,
    synthetic: dict | None = None,
    search_system_dirs: bool | None = None,
) -> DeviceDataset:
    """Read (or generate) `name` and place all of it on `device`.

    mnist/fashion_mnist are looked for in root/<MNIST|FashionMNIST>/raw, then root, then (when
    `search_system_dirs`; None: when `root` is the default, is_default_root) SYSTEM_DATA_DIRS; cifar10
    in root/cifar-10-batches-py (extracted from root/cifar-10-python.tar.gz if only that is there).
    Missing files are downloaded with torchvision into root when `download` is set. Raises a DataError
    when the data set cannot be loaded.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    device = torch.device(device)
    default_root = is_default_root(root) if search_system_dirs is None else search_system_dirs
    root = Path(root).expanduser()
    started = time.perf_counter()
    if name == "synthetic":
        arrays, num_classes, checksum, source = make_synthetic(synthetic or {})
    else:
        if root.exists() and not root.is_dir():
            raise DataError(
                f"data.root={root} is a file, not a directory: point data.root (or {ROOT_ENV}) at the "
                f"directory that holds {TITLES[name]}'s files"
            )
        if name == "cifar10":
            arrays, checksum, source = _load_cifar10(root, download, download_timeout_s)
        else:
            arrays, checksum, source = _load_idx_dataset(
                name, root, download, download_timeout_s, default_root
            )
        num_classes = 10
    train_x, train_y, test_x, test_y = arrays
    for split, labels in (("train", train_y), ("test", test_y)):
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise DatasetFormatError(
                f"{name} ({source}): {split} labels span [{int(labels.min())}, {int(labels.max())}], "
                f"outside [0, {num_classes - 1}]; {_damaged_fix(name, Path(source), root)}"
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


def _idx_search_dirs(name: str, root: Path, system: bool) -> list[Path]:
    own = [root / TORCHVISION_FOLDERS[name] / "raw", root]
    return [*own, *SYSTEM_DATA_DIRS.get(name, ())] if system else own


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


def _find_idx_files(name: str, root: Path, system: bool) -> tuple[list[Path] | None, list[str]]:
    """The four IDX files from the first folder that holds all of them, or None; and, for the message,
    the folders that hold some of them only."""
    partial = []
    for directory in _idx_search_dirs(name, root, system):
        found, missing = _find_in_dir(directory, IDX_FILES.values())
        if not missing:
            return found, partial
        if found:
            partial.append(f"{directory} lacks {', '.join(missing)}")
    return None, partial


def _installed_copy(name: str) -> Path | None:
    """The first system folder (SYSTEM_DATA_DIRS) that holds all of `name`'s files."""
    for directory in SYSTEM_DATA_DIRS.get(name, ()):
        if not _find_in_dir(directory, IDX_FILES.values())[1]:
            return directory
    return None


def _offline_hint(name: str) -> str:
    """What runs without a download: Fashion-MNIST from Debian's package, and the generated set."""
    fashion = _installed_copy("fashion_mnist")
    if fashion:
        debian = f"reads Debian's copy in {fashion}"
    else:
        debian = "reads Debian's copy once apt-get install dataset-fashion-mnist has put it in place"
    example = "" if name == "fashion_mnist" else " (e.g. experiment=fig1_fashion_mnist)"
    return (
        f"offline, data=fashion_mnist{example} with the default data.root {debian}, "
        f"and data=synthetic needs no files"
    )


def _idx_missing(name: str, root: Path, system: bool, reason: str, partial: list[str]) -> str:
    """The one-line message for IDX files found nowhere (`partial`: folders with some of them)."""
    title, files = TITLES[name], ", ".join(IDX_FILES.values())
    own = root / TORCHVISION_FOLDERS[name] / "raw"
    searched = [own, root, *(SYSTEM_DATA_DIRS.get(name, ()) if system else ())]
    where = ", ".join(map(str, searched[:-1])) + f" or {searched[-1]}"
    root_words = "the default data.root" if system else f"data.root={root}"
    found_some = f" ({'; '.join(partial)})" if partial else ""
    fix = (
        f"put {files} (raw or .gz, from {SOURCES[name]}) in {own} or {root}, or point data.root at the "
        f"directory that holds them"
    )
    installed = None if system else _installed_copy(name)
    if installed:  # the offline hint would say the same
        fix += f", or leave data.root unset: it then reads Debian's copy in {installed}"
    else:
        fix += f"; {_offline_hint(name)}"
    return f"{title} not found in {where} ({root_words}){found_some}; {reason}. Fix: {fix}"


def _damaged_fix(name: str, path: Path, root: Path) -> str:
    """What to do about a damaged data file at (or in) `path`."""
    title = TITLES.get(name, name)
    system = SYSTEM_DATA_DIRS.get(name, ())
    if name in DEBIAN_PACKAGES and any(path == d or d in path.parents for d in system):
        return f"Debian's copy is damaged: apt-get install --reinstall {DEBIAN_PACKAGES[name]}"
    return (
        f"the file is damaged or not {title}'s: replace it with a good copy (from {SOURCES[name]}), "
        f"or delete it and run again, which downloads {title} into {root} (data.download=true)"
    )


def _load_idx_dataset(name: str, root: Path, download: bool, timeout_s: float, system: bool = False):
    paths, partial = _find_idx_files(name, root, system)
    if paths is None:
        reason = _download_or_reason(name, root, download, timeout_s)
        if reason is None:
            paths, partial = _find_idx_files(name, root, system)
            reason = "torchvision's download finished but the files are still not where expected"
        if paths is None:
            raise DatasetUnavailableError(_idx_missing(name, root, system, reason, partial))
    hasher = hashlib.sha256()
    arrays = {}
    for key, path in zip(IDX_FILES, paths, strict=True):
        try:
            array, file_bytes = read_idx(path, ndim=3 if key.endswith("images") else 1)
        except DatasetFormatError as err:
            raise DatasetFormatError(f"{err}; {_damaged_fix(name, path, root)}") from err
        hasher.update(file_bytes)
        arrays[key] = array
    splits = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DatasetFormatError(
                f"{paths[0].parent}: {split} has {len(images)} images but {len(labels)} labels; "
                f"the files are not one set: {_damaged_fix(name, paths[0].parent, root)}"
            )
        # .copy(): the decompressed bytes are read-only, and the CPU-device tensors must own their memory.
        splits.append(torch.from_numpy(images[:, None].copy()))
        splits.append(torch.from_numpy(labels.astype(np.int64)))
    return tuple(splits), hasher.hexdigest(), str(paths[0].parent)


def _download_or_reason(name: str, root: Path, download: bool, timeout_s: float) -> str | None:
    """Download `name` with torchvision; None on success, else why not (for the error message)."""
    if not download:
        return "downloading is off (data.download=false)"
    try:
        _torchvision_download(name, root, timeout_s)
    except Exception as err:  # any failure (network, disk, checksum) ends in the same actionable message
        return f"the download failed ({brief_reason(err)})"
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
            reason = reason or "the download finished but the batches are still missing"
            raise DatasetUnavailableError(
                f"CIFAR-10 not found in data.root={root}: no {tarball.name} there, and {batch_dir} lacks "
                f"{', '.join(missing)}; {reason}. Fix: put {CIFAR_TARBALL} (from {SOURCES['cifar10']}) in "
                f"{root}, or point data.root at the directory that holds it; {_offline_hint('cifar10')}"
            )
    hasher = hashlib.sha256()
    parts = []
    for path in found:
        file_bytes = read_file(path)
        hasher.update(file_bytes)
        try:
            parts.append(parse_cifar_batch(path, file_bytes))
        except DatasetFormatError as err:
            raise DatasetFormatError(
                f"{err}; the batch is damaged: delete {batch_dir} and put a good {CIFAR_TARBALL} (from "
                f"{SOURCES['cifar10']}) in {root} (or run again to download it, data.download=true)"
            ) from err
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
        raise DatasetFormatError(
            f"{tarball}: cannot extract the CIFAR-10 batches ({one_line(err)}); the archive is damaged or "
            f"incomplete: delete it and download it again (from {SOURCES['cifar10']}, or run again with "
            f"data.download=true)"
        ) from err
