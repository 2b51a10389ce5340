"""Subset selection: pure functions over a source whose rows are grouped by class.

A source is ``labels`` (int32, non-decreasing, so each class is one contiguous run of
rows) plus ``ranks`` (uint64, :func:`subsets.keys.rank_keys`). Within each class the
rows are ordered by rank; a row's *position* is its place in that order. Then:

* a fraction ``f`` of a class of ``n`` images keeps positions ``< max(1, round(f·n))``
  (rounded half up) — nested in ``f`` because the count is monotone in ``f``, balanced
  because every class is cut the same way, and independent of listing order because
  ranks depend only on (seed, path);
* a held-out set of ``h`` per class (``in22k-val``) takes the *last* ``min(h, n // 2)``
  positions, and the fractions of that source are taken from the rest, so the two
  never overlap.
"""

from __future__ import annotations

import math

import numpy as np

from subsets.errors import SubsetError

_MANY_CLASSES = 100_000


def check_fraction(fraction: float, where: str = "fraction") -> float:
    """Return ``fraction`` as a float if it lies in (0, 1], else raise SubsetError."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise SubsetError(f"{where}: must be a number in (0, 1], got {fraction!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise SubsetError(f"{where}: must be in (0, 1], got {fraction!r}")
    return value


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class (int64, length ``num_classes``)."""
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


def class_positions(
    labels: np.ndarray, ranks: np.ndarray, counts: np.ndarray, distinct: bool = True
) -> np.ndarray:
    """Position (int64) of every row within its class, classes ordered by rank.

    ``distinct``: the ranks are all different (true unless two paths share a key), so
    any sort algorithm gives the same order; otherwise a stable sort breaks ties by row.
    """
    if len(labels) and np.any(labels[1:] < labels[:-1]):
        raise ValueError("labels must be sorted (rows grouped by class)")
    kind = None if distinct else "stable"
    positions = np.empty(len(labels), dtype=np.int64)
    if len(counts) > _MANY_CLASSES:  # one global sort beats a Python loop per class
        by_rank = np.argsort(ranks, kind=kind)
        order = by_rank[np.argsort(labels[by_rank], kind="stable")]
        starts = np.cumsum(counts) - counts
        positions[order] = np.arange(len(labels), dtype=np.int64) - starts[labels]
        return positions
    start = 0
    for size in counts.tolist():  # small sorts that stay in cache
        if size:
            within = np.argsort(ranks[start : start + size], kind=kind)
            positions[start + within] = np.arange(size, dtype=np.int64)
        start += size
    return positions


def fraction_counts(counts: np.ndarray, fraction: float) -> np.ndarray:
    """Images kept per class for ``fraction``: round half up, at least one."""
    kept = np.floor(counts * check_fraction(fraction) + 0.5).astype(np.int64)
    return np.maximum(kept, 1)


def holdout_counts(counts: np.ndarray, per_class: int) -> np.ndarray:
    """Held-out images per class: ``per_class``, never more than half of the class."""
    if per_class < 0:
        raise SubsetError(f"holdout per class: must be >= 0, got {per_class}")
    return np.minimum(per_class, counts // 2)


def select_fraction(
    positions: np.ndarray, labels: np.ndarray, pool_counts: np.ndarray, fraction: float
) -> np.ndarray:
    """Boolean row mask of the first ``round(fraction·pool)`` positions of every class."""
    return positions < fraction_counts(pool_counts, fraction)[labels]


def select_holdout(
    positions: np.ndarray, labels: np.ndarray, counts: np.ndarray, held: np.ndarray
) -> np.ndarray:
    """Boolean row mask of the last ``held[c]`` positions of every class ``c``."""
    return positions >= (counts - held)[labels]
