"""Measurements taken during training, one module each, registered on import of this package.

    from bn_repro.measures import register_measurement, Measurement
    measures.names()          # ('activations', ...)

Adding a measurement: one module here (a `Measurement` subclass decorated with `register_measurement`)
and its entry in configs/measure/default.yaml (`every: 0` and its options); see the README,
"Add a measurement", and bn_repro/measures/base.py for the contract.
"""

from __future__ import annotations

import importlib
import pkgutil

from bn_repro.measures.base import (
    PHASES,
    MeasureConfigError,
    MeasureContext,
    Measurement,
    Scheduled,
    build,
    check_config,
    get,
    isolated,
    names,
    options_of,
    register_measurement,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "PHASES", "MeasureConfigError", "MeasureContext", "Measurement", "Scheduled", "build", "check_config",
    "get", "isolated", "names", "options_of", "register_measurement",
]  # fmt: skip
