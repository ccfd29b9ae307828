"""Data: readers of the real file formats and the generated set, the dataset held on the device, the
batch order, and device-side augmentation.

    data = load_dataset("fashion_mnist", "data", device="cuda")   # also finds Debian's copy offline
    batches = EpochBatches(len(data.train_y), 60, torch.Generator().manual_seed(0), data.train_y.device)
    idx = next(batches)
    x, y = data.normalize(data.train_x[idx]), data.train_y[idx]

Names are imported on first use (PEP 562), so `bn_repro.data.catalog` (names, shapes) and the errors
(DataError: a data set that cannot be loaded, reported in one line) load without torch.
"""

from __future__ import annotations

import importlib

from bn_repro.data.catalog import DATASETS, SAMPLERS, dataset_shape

_LAZY = {
    "RandomCropFlip": "augment",
    "EpochBatches": "batches",
    "FewClassBatches": "batches",
    "make_batches": "batches",
    "CIFAR_BATCHES": "dataset",
    "CIFAR_DIR": "dataset",
    "CIFAR_TARBALL": "dataset",
    "IDX_FILES": "dataset",
    "DeviceDataset": "dataset",
    "load_dataset": "dataset",
    "DataError": "errors",
    "DatasetFormatError": "errors",
    "DatasetUnavailableError": "errors",
}

__all__ = ["DATASETS", "SAMPLERS", "dataset_shape", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
