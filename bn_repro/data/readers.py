"""Parsers of the dataset files (IDX for MNIST/Fashion-MNIST, pickled CIFAR-10 batches) and the
generated `synthetic` set; each returns uint8 arrays and checks that the file holds what its format
promises."""

from __future__ import annotations

import gzip
import hashlib
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bn_repro.data.catalog import CIFAR_SHAPE, SYNTHETIC_DEFAULTS, SYNTHETIC_SHAPES
from bn_repro.data.errors import DataError, DatasetFormatError, one_line

# Prototype amplitude and pixel noise (uint8 units). Measured at 2000 train examples, batch 60, SGD: a
# linear classifier is near 100% after ~100 steps, a 3x100 sigmoid MLP without BN after ~300-500. It is
# a smoke-test task that shows learning quickly, not a benchmark.
SYNTHETIC_SIGNAL = 40.0
SYNTHETIC_NOISE = 64.0

_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path, ndim: int) -> tuple[np.ndarray, bytes]:
    """Parse an IDX file of unsigned bytes with `ndim` dimensions (raw or gzip): (array, the file's bytes)."""
    file_bytes = read_file(path)
    content = file_bytes
    if content[:2] == _GZIP_MAGIC:
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as err:
            raise DatasetFormatError(f"{path}: not a readable gzip file ({err})") from err
    if len(content) < 4:
        raise DatasetFormatError(f"{path}: {len(content)} bytes, too short for an IDX header")
    zero, type_code, dims_count = struct.unpack(">HBB", content[:4])
    if zero != 0:
        raise DatasetFormatError(
            f"{path}: bad IDX magic number 0x{content[:4].hex()} (expected 0x0000{_IDX_UBYTE:02x}{ndim:02x})"
        )
    if type_code != _IDX_UBYTE:
        raise DatasetFormatError(f"{path}: IDX element type 0x{type_code:02x}, expected 0x08 (unsigned byte)")
    if dims_count != ndim:
        raise DatasetFormatError(f"{path}: IDX data has {dims_count} dimensions, expected {ndim}")
    header_len = 4 + 4 * ndim
    if len(content) < header_len:
        raise DatasetFormatError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", content[4:header_len])
    expected = math.prod(dims)
    if len(content) - header_len != expected:
        raise DatasetFormatError(
            f"{path}: IDX payload is {len(content) - header_len} bytes but dimensions {dims} need {expected}"
        )
    if expected == 0:
        raise DatasetFormatError(f"{path}: IDX data is empty (dimensions {dims})")
    array = np.frombuffer(content, dtype=np.uint8, count=expected, offset=header_len).reshape(dims)
    return array, file_bytes


def read_file(path: Path) -> bytes:
    """The file's bytes; a file that cannot be read (permissions, I/O) is a DataError naming it."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {one_line(err.strerror or err)}") from err


def parse_cifar_batch(path: Path, file_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    # Unpickling runs code from the file: the same trust torchvision places in the official archive.
    try:
        batch = pickle.loads(file_bytes, encoding="bytes")
    except Exception as err:
        raise DatasetFormatError(f"{path}: not a readable CIFAR-10 pickle batch ({err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetFormatError(f"{path}: expected a dict with b'data' and b'labels', got {keys}")
    images, labels = batch[b"data"], batch[b"labels"]
    pixels = math.prod(CIFAR_SHAPE)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != (pixels,):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DatasetFormatError(f"{path}: b'data' is {got}, expected uint8 (N, {pixels})")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DatasetFormatError(f"{path}: b'labels' are not integers ({err})") from err
    if labels.shape != (len(images),):
        raise DatasetFormatError(f"{path}: {len(images)} images but b'labels' has shape {labels.shape}")
    if len(images) == 0:
        raise DatasetFormatError(f"{path}: the batch is empty")
    if labels.min() < 0 or labels.max() >= 10:
        raise DatasetFormatError(f"{path}: labels span [{labels.min()}, {labels.max()}], outside [0, 9]")
    return np.ascontiguousarray(images.reshape(-1, *CIFAR_SHAPE)), labels


# ---------------------------------------------------------------- synthetic


def make_synthetic(options: dict[str, Any]):
    """Class prototypes (smooth random images) plus pixel noise, clipped to uint8; its own generator."""
    unknown = set(options) - set(SYNTHETIC_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown synthetic keys {sorted(unknown)}; valid: {', '.join(SYNTHETIC_DEFAULTS)}")
    opts = {**SYNTHETIC_DEFAULTS, **options}
    if opts["shape"] not in SYNTHETIC_SHAPES:
        raise ValueError(f"synthetic shape {opts['shape']!r}; valid choices: {', '.join(SYNTHETIC_SHAPES)}")
    for key in ("num_train", "num_test", "num_classes"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"synthetic {key}={value!r}; expected an integer >= 1")
    channels, height, width = SYNTHETIC_SHAPES[opts["shape"]]
    generator = torch.Generator().manual_seed(int(opts["seed"]))
    coarse = torch.randn(opts["num_classes"], channels, 7, 7, generator=generator)
    prototypes = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    prototypes = 128.0 + SYNTHETIC_SIGNAL * prototypes

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(opts["num_classes"], (n,), generator=generator)
        noise = torch.randn(n, channels, height, width, generator=generator)
        images = (prototypes[labels] + SYNTHETIC_NOISE * noise).round_().clamp_(0, 255).to(torch.uint8)
        return images, labels

    arrays = (*draw(opts["num_train"]), *draw(opts["num_test"]))
    hasher = hashlib.sha256()
    for tensor in arrays:
        hasher.update(tensor.numpy())
    return arrays, opts["num_classes"], hasher.hexdigest(), "generated"
