"""Intervals over seeds: the Student t-interval of a mean, and of a paired difference.

    mean, half = t_interval([0.886, 0.889, 0.884])        # 95%: mean +- half
    diff = paired_difference({0: 0.886, 1: 0.889}, {0: 0.885, 1: 0.890})   # a - b, paired by seed

Seeds are few (3 to 10) and the accuracies of a net over seeds are close to normal, so the t-interval
(scipy's Student t quantile) is the interval to state; a bootstrap over 10 values understates the
spread. Paired by seed: two norms at one seed start from the same initial weights and batch order, so
the per-seed difference removes the seed's own luck from the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats

CONFIDENCE = 0.95


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """(mean, half-width of its `confidence` t-interval); half-width None below 2 values, mean None for
    none. Non-finite values are an error: a diverged run belongs out of a mean, not in it."""
    xs = [float(v) for v in values]
    if any(not math.isfinite(x) for x in xs):
        raise ValueError(f"t_interval of non-finite values: {xs}")
    if not xs:
        return None, None
    mean = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    quantile = float(_scipy_stats.t.ppf(0.5 + confidence / 2, df=len(xs) - 1))
    return mean, quantile * std / math.sqrt(len(xs))


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (std None below two values, both None for none): the tables' mean +- std."""
    if not values:
        return None, None
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def numpy_mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std of the values that are numbers (std None with fewer than two), summed as numpy
    sums: mean_std's exact sums differ from numpy's in the last digit of the committed tables. A value that
    is infinite (e.g. |log std ratio| of a layer whose units died, std 0) is the mean, with no std."""
    xs = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if not len(xs):
        return None, None
    if not np.isfinite(xs).all():
        return float(xs[~np.isfinite(xs)][0]), None
    return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else None


@dataclass(frozen=True)
class Difference:
    """a - b over the seeds both have: the mean difference and its t-interval half-width."""

    pairs: int
    mean: float | None
    ci: float | None

    @property
    def excludes_zero(self) -> bool | None:
        """Whether the interval excludes 0 (a difference the seeds can tell); None without an interval."""
        if self.mean is None or self.ci is None:
            return None
        return abs(self.mean) > self.ci


def paired_difference(
    a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE
) -> Difference:
    """a[seed] - b[seed] over the seeds in both, with its t-interval."""
    seeds = sorted(set(a) & set(b))
    mean, ci = t_interval((a[s] - b[s] for s in seeds), confidence)
    return Difference(len(seeds), mean, ci)
