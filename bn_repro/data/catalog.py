"""What the datasets are, known without reading their files or importing torch: names, image shapes,
class counts and the generated set's options (config checks use them before anything heavy loads)."""

from __future__ import annotations

DATASETS = ("mnist", "fashion_mnist", "cifar10", "synthetic")

CIFAR_SHAPE = (3, 32, 32)
SYNTHETIC_SHAPES = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}
SYNTHETIC_DEFAULTS = {"shape": "mnist", "num_train": 2000, "num_test": 500, "num_classes": 10, "seed": 0}


def dataset_shape(name: str, synthetic: dict | None = None) -> tuple[tuple[int, int, int], int]:
    """(image shape, class count) of a dataset, known without reading its files."""
    if name == "synthetic":
        opts = {**SYNTHETIC_DEFAULTS, **(synthetic or {})}
        if opts["shape"] not in SYNTHETIC_SHAPES:
            raise ValueError(
                f"synthetic shape {opts['shape']!r}; valid choices: {', '.join(SYNTHETIC_SHAPES)}"
            )
        return SYNTHETIC_SHAPES[opts["shape"]], int(opts["num_classes"])
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    return (CIFAR_SHAPE if name == "cifar10" else (1, 28, 28)), 10


# data.sampler: the batch order (bn_repro/data/batches.py). iid: a random permutation per epoch;
# few_classes: each batch from data.classes_per_batch classes only (non-i.i.d. batches).
SAMPLERS = ("iid", "few_classes")
