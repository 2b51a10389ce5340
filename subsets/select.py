"""Subset selection: pure functions over a source whose rows are grouped by class.

A source is ``labels`` (int32, non-decreasing, so each class is one contiguous run of
rows) plus ``ranks`` (uint64, :func:`subsets.keys.rank_keys`). Within each class the
rows are ordered by rank; a row's *position* is its place in that order. Then:

* a fraction ``f`` of a class of ``n`` images keeps positions ``< max(1, round(f·n))``
  (rounded half up, in exact integer arithmetic: ``f`` is a Fraction) — nested in
  ``f`` because the count is monotone in ``f``, balanced because every class is cut
  the same way, and independent of listing order because ranks depend only on
  (seed, path);
* a held-out set of ``h`` per class (``in22k-val``) takes the *last* ``min(h, n // 2)``
  positions, and the fractions of that source are taken from the rest, so the two
  never overlap.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from subsets.errors import SubsetError

_MANY_CLASSES = 100_000


FractionLike = Fraction | float | int | str
MAX_PCT_DECIMALS = 12
"""Decimals of a percentage a subset name carries (``in1k-0.000000000001pct``)."""


def _parse(value: FractionLike) -> Fraction:
    """``value`` as an exact fraction; a float stands for its shortest decimal (repr)."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a fraction")
    if isinstance(value, Fraction | int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not finite")
        return Fraction(repr(value))
    if isinstance(value, str):
        return Fraction(value.strip())
    raise TypeError(f"not a number: {type(value).__name__}")


def _decimals(pct: Fraction) -> int | None:
    """Decimals of the exact decimal form of ``pct``; None if it has none (1/3)."""
    den, twos, fives = pct.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    return max(twos, fives) if den == 1 else None


def check_fraction(fraction: FractionLike, where: str = "fraction") -> Fraction:
    """``fraction`` as an exact Fraction in (0, 1] whose percentage a name can carry.

    Exact: '0.123456789' is 123456789/10⁹, and a float is taken as the decimal it
    prints as (0.1 is 1/10), so selection counts need no floating point.
    """
    shown = float(fraction) if isinstance(fraction, Fraction) else fraction
    try:
        value = _parse(fraction)
    except (TypeError, ValueError, ZeroDivisionError):
        raise SubsetError(f"{where}: must be a number in (0, 1], got {shown!r}") from None
    if not 0 < value <= 1:
        raise SubsetError(f"{where}: must be in (0, 1], got {shown!r}")
    decimals = _decimals(value * 100)
    if decimals is None or decimals > MAX_PCT_DECIMALS:
        raise SubsetError(
            f"{where}: {shown!r} is {float(value * 100)!r} percent, which a subset name "
            f"cannot carry exactly (at most {MAX_PCT_DECIMALS} decimals of a percent)"
        )
    return value


def percent_text(fraction: Fraction) -> str:
    """The exact percentage of ``fraction`` as a decimal without exponent or trailing
    zeros: 1/10 → '10', 1/8 → '12.5', 1/10⁷ → '0.00001'."""
    pct = fraction * 100
    decimals = _decimals(pct)
    if decimals is None:
        raise ValueError(f"{fraction} has no finite decimal percentage")
    scaled = pct.numerator * 10**decimals // pct.denominator
    whole, part = divmod(scaled, 10**decimals)
    return f"{whole}.{part:0{decimals}d}" if decimals else str(whole)


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


def fraction_counts(counts: np.ndarray, fraction: FractionLike) -> np.ndarray:
    """Images kept per class for ``fraction``: round half up, at least one.

    ``floor(n·p/q + 1/2) = (2·n·p + q) // (2·q)`` in integers, exactly (the float form
    kept 14 of 100 images for 0.145); for 10/20/25/50/100 % it equals the float form
    of earlier versions, so their manifests are unchanged.
    """
    f = check_fraction(fraction)
    p, q = f.numerator, f.denominator
    counts = np.asarray(counts, dtype=np.int64)
    if not len(counts):
        return counts.copy()
    if 2 * int(counts.max()) * p + q < 2**62:  # fits int64: vectorised
        kept = (2 * counts * p + q) // (2 * q)
    else:
        kept = np.array([(2 * n * p + q) // (2 * q) for n in counts.tolist()], dtype=np.int64)
    return np.maximum(kept, 1)


def holdout_counts(counts: np.ndarray, per_class: int) -> np.ndarray:
    """Held-out images per class: ``per_class``, never more than half of the class."""
    if per_class < 0:
        raise SubsetError(f"holdout per class: must be >= 0, got {per_class}")
    return np.minimum(per_class, counts // 2)


def select_fraction(
    positions: np.ndarray, labels: np.ndarray, pool_counts: np.ndarray, fraction: FractionLike
) -> np.ndarray:
    """Boolean row mask of the first ``round(fraction·pool)`` positions of every class."""
    return positions < fraction_counts(pool_counts, fraction)[labels]


def select_holdout(
    positions: np.ndarray, labels: np.ndarray, counts: np.ndarray, held: np.ndarray
) -> np.ndarray:
    """Boolean row mask of the last ``held[c]`` positions of every class ``c``."""
    return positions >= (counts - held)[labels]
