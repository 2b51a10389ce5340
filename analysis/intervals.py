"""Confidence intervals for correlation coefficients that hold at a study's sizes.

A study has few cells per group (a model has 9 to 15), where a bootstrap interval is
unstable: BCa at n = 9 moves from one resample set to the next, and dropping one cell can
move r from −0.77 to −0.98. So, by sample size:

- n < ``BOOTSTRAP_MIN_N``: closed-form intervals on Fisher's z = atanh(r), back-transformed
  with tanh (so they stay inside [−1, 1]):

  * Pearson: se(z) = 1 / sqrt(n − 3) (Fisher 1921), n ≥ 4;
  * Spearman: se(z) = sqrt((1 + r²/2) / (n − 3)) (Bonett & Wright 2000), n ≥ 4;
  * Kendall tau-b: se(z) = sqrt(0.437 / (n − 4)) (Fieller, Hartley & Pearson 1957), n ≥ 5;

- n ≥ ``BOOTSTRAP_MIN_N``: a paired bootstrap of cells (BCa, fixed seed), percentile where
  BCa is undefined.

Each interval says which method made it (``ci_method`` in fits.json).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats

BOOTSTRAP_MIN_N = 30
# name -> (minimum n, se of z as a function of (r, n), method label)
FISHER_Z: dict[str, tuple[int, Callable[[float, int], float], str]] = {
    "pearson": (4, lambda r, n: 1.0 / math.sqrt(n - 3), "Fisher z"),
    "spearman": (4, lambda r, n: math.sqrt((1.0 + r * r / 2.0) / (n - 3)), "Bonett-Wright z"),
    "kendall": (5, lambda r, n: math.sqrt(0.437 / (n - 4)), "Fieller z"),
}


def fisher_interval(
    name: str, r: float, n: int, confidence: float
) -> tuple[float | None, float | None, str]:
    """The closed-form interval of correlation ``name`` (see the module docstring)."""
    min_n, se_of, label = FISHER_Z[name]
    if n < min_n:
        return None, None, f"none (n < {min_n})"
    if abs(r) >= 1.0:
        return float(r), float(r), label
    z, se = math.atanh(r), se_of(r, n)
    q = float(stats.norm.ppf(0.5 + confidence / 2.0))
    return math.tanh(z - q * se), math.tanh(z + q * se), label


def bootstrap_interval(
    x: np.ndarray,
    y: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], Callable[..., np.ndarray]],
    *,
    seed: int,
    n_resamples: int,
    confidence: float,
) -> tuple[float | None, float | None, str]:
    """Paired bootstrap of cells: BCa, or percentile of the defined resamples."""
    with warnings.catch_warnings():
        # Resamples that repeat one cell have no correlation (nan); handled below.
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            (np.arange(len(x)),),  # resample cells: the pairs stay together
            statistic(x, y),
            vectorized=True,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    lo, hi = res.confidence_interval
    if np.isfinite(lo) and np.isfinite(hi):
        return _clip(lo), _clip(hi), "BCa bootstrap"
    dist = res.bootstrap_distribution
    dist = dist[np.isfinite(dist)]
    if len(dist) < n_resamples // 2:
        return None, None, "none (bootstrap undefined)"
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(dist, [tail, 100.0 - tail])
    return _clip(lo), _clip(hi), "percentile bootstrap"


def _clip(r: float) -> float:
    """Rounding can carry a correlation just past ±1."""
    return float(np.clip(r, -1.0, 1.0))
