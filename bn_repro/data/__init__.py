"""Data: readers of the real file formats and the generated set, the dataset held on the device, the
batch order, and device-side augmentation.

    data = load_dataset("fashion_mnist", "data", device="cuda")   # also finds Debian's copy offline
    batches = EpochBatches(len(data.train_y), 60, torch.Generator().manual_seed(0), data.train_y.device)
    idx = next(batches)
    x, y = data.normalize(data.train_x[idx]), data.train_y[idx]
"""

from bn_repro.data.augment import RandomCropFlip
from bn_repro.data.batches import EpochBatches
from bn_repro.data.dataset import (
    CIFAR_BATCHES,
    CIFAR_DIR,
    CIFAR_TARBALL,
    DATASETS,
    IDX_FILES,
    DatasetUnavailableError,
    DeviceDataset,
    load_dataset,
)
from bn_repro.data.readers import DatasetFormatError

__all__ = [
    "CIFAR_BATCHES", "CIFAR_DIR", "CIFAR_TARBALL", "DATASETS", "IDX_FILES", "DatasetFormatError",
    "DatasetUnavailableError", "DeviceDataset", "EpochBatches", "RandomCropFlip", "load_dataset",
]  # fmt: skip
