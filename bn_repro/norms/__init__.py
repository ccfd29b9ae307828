"""Normalization layers and their registry: one module per norm, registered on import of this package.

    from bn_repro import norms
    norms.names()                              # ('none', 'builtin', 'custom', 'groupnorm', ...)
    layer = norms.build("groupnorm", 64, 4, groups=8)
    norm_layer = norms.factory(config["norm"])  # what models take

Adding a norm: one module here that decorates its builder with `register_norm`, and one
configs/norm/<name>.yaml (`kind: <name>` and its options); see the README, "Add a norm".
"""

from __future__ import annotations

import importlib
import pkgutil

from bn_repro.norms.registry import (
    NormConfigError,
    NormFactory,
    NormSpec,
    build,
    check_config,
    factory,
    get,
    kind_of,
    label,
    names,
    register_norm,
)

# Modules that hold no registry entry of their own; every other module is imported for its entries.
_INFRASTRUCTURE = {"registry", "sync", "fast_batchnorm", "population", "seed_reference"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module.name}")

from bn_repro.norms.batchnorm import BatchNorm  # noqa: E402 - after the entries are registered
from bn_repro.norms.population import batch_norm_layers, recompute_population_statistics  # noqa: E402
from bn_repro.norms.sync import synchronize  # noqa: E402

__all__ = [
    "BatchNorm", "NormConfigError", "NormFactory", "NormSpec", "batch_norm_layers", "build", "check_config",
    "factory", "get", "kind_of", "label", "names", "recompute_population_statistics", "register_norm",
    "synchronize",
]  # fmt: skip
