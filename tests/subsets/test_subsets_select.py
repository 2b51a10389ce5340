"""Selection maths: counts, positions, fractions and held-out sets (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from subsets.errors import SubsetError
from subsets.select import (
    check_fraction,
    class_positions,
    fraction_counts,
    holdout_counts,
    select_fraction,
    select_holdout,
)


def _grouped(counts: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    ranks = np.random.default_rng(seed).permutation(len(labels)).astype(np.uint64)
    return labels, ranks, np.array(counts, dtype=np.int64)


def test_fraction_counts_round_half_up_and_keep_at_least_one() -> None:
    counts = np.array([1, 5, 7, 15, 25, 1300])
    assert fraction_counts(counts, 0.1).tolist() == [1, 1, 1, 2, 3, 130]
    assert fraction_counts(counts, 0.5).tolist() == [1, 3, 4, 8, 13, 650]
    assert fraction_counts(counts, 1.0).tolist() == counts.tolist()


@pytest.mark.parametrize("bad", [0, -0.1, 1.01, float("nan"), float("inf"), "x"])
def test_fraction_outside_unit_interval(bad: object) -> None:
    with pytest.raises(SubsetError, match=r"fraction: must be .*in \(0, 1\]"):
        check_fraction(bad)


def test_positions_are_a_permutation_within_each_class() -> None:
    labels, ranks, counts = _grouped([3, 1, 6, 2])
    positions = class_positions(labels, ranks, counts)
    for c, n in enumerate(counts):
        assert sorted(positions[labels == c].tolist()) == list(range(n))
        # position order is rank order
        assert np.array_equal(np.argsort(positions[labels == c]), np.argsort(ranks[labels == c]))


def test_positions_with_many_classes_use_the_global_sort() -> None:
    labels, ranks, counts = _grouped([2] * 100_001, seed=1)
    positions = class_positions(labels, ranks, counts)
    first = ranks[0::2] < ranks[1::2]
    assert np.array_equal(positions[0::2], np.where(first, 0, 1))


def test_tied_ranks_break_by_row_when_not_distinct() -> None:
    labels = np.zeros(4, dtype=np.int32)
    ranks = np.array([5, 5, 1, 5], dtype=np.uint64)
    positions = class_positions(labels, ranks, np.array([4]), distinct=False)
    assert positions.tolist() == [1, 2, 0, 3]


def test_fractions_are_nested_and_balanced() -> None:
    labels, ranks, counts = _grouped([7, 12, 20, 33, 1])
    positions = class_positions(labels, ranks, counts)
    previous = np.zeros(len(labels), dtype=bool)
    for f in (0.1, 0.2, 0.5, 1.0):
        rows = select_fraction(positions, labels, counts, f)
        assert np.all(rows[previous])  # nested
        kept = np.bincount(labels[rows], minlength=len(counts))
        assert kept.tolist() == fraction_counts(counts, f).tolist()  # balanced
        previous = rows


def test_holdout_takes_at_most_half_and_is_disjoint() -> None:
    labels, ranks, counts = _grouped([1, 2, 9, 40])
    positions = class_positions(labels, ranks, counts)
    held = holdout_counts(counts, 5)
    assert held.tolist() == [0, 1, 4, 5]
    val = select_holdout(positions, labels, counts, held)
    train = select_fraction(positions, labels, counts - held, 1.0)
    assert not np.any(val & train)
    assert np.all(val | train)
    with pytest.raises(SubsetError, match="holdout per class: must be >= 0"):
        holdout_counts(counts, -1)
