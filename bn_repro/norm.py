"""Compatibility import: the BatchNorm code lives in bn_repro/norms/ (batchnorm.py, population.py)."""

from bn_repro.norms.batchnorm import BACKWARDS, BatchNorm
from bn_repro.norms.population import batch_norm_layers, recompute_population_statistics

__all__ = ["BACKWARDS", "BatchNorm", "batch_norm_layers", "recompute_population_statistics"]
