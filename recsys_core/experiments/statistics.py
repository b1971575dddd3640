"""Statistics for comparing two models: bootstrap CIs, effect sizes, sample size for a given power.

The sample size is what an online two-arm test would need per arm to detect a lift (two-sided normal approximation,
n = 2 (z_{1-a/2} + z_{1-b})^2 / d^2 with d = lift / pooled per-user sd of the two arms).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def bootstrap_mean_ci(
    values: np.ndarray, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 42, max_cells: int = 4_000_000
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling entries with replacement (vectorised, in row chunks)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, max_cells // x.size)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, rows_per_chunk):
        stop = min(n_boot, start + rows_per_chunk)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def cohens_d_paired(diff: np.ndarray) -> float:
    """d_z: mean paired difference over its standard deviation (0 when every difference is equal and zero)."""
    d = np.asarray(diff, dtype=np.float64)
    if d.size < 2:
        return float("nan")
    sd = d.std(ddof=1)
    if sd == 0:
        return 0.0 if d.mean() == 0 else math.copysign(math.inf, d.mean())
    return float(d.mean() / sd)


def required_sample_size_per_arm(lift: float, sd_a: float, sd_b: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Users per arm for a two-sided two-sample test to detect `lift` (inf when the lift is 0)."""
    pooled = math.sqrt((sd_a**2 + sd_b**2) / 2)
    if lift == 0 or pooled == 0:
        return math.inf if lift == 0 else 2.0
    effect = abs(lift) / pooled
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(math.ceil(2 * z**2 / effect**2))
