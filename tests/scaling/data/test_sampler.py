"""StepSampler: exact resume, epochs as permutations, disjoint ranks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scaling.data.sampler import StepSampler


def take(sampler: StepSampler, steps: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(sampler, steps))


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("start", [0, 1, 4, 7, 13])
def test_resume_mid_epoch_is_exact(drop_last: bool, start: int) -> None:
    straight = take(StepSampler(23, batch_size=5, seed=3, drop_last=drop_last), 20)
    resumed = take(
        StepSampler(23, batch_size=5, seed=3, start_step=start, drop_last=drop_last), 20 - start
    )
    assert resumed == straight[start:]


def test_each_epoch_is_a_permutation_with_the_tail_dropped() -> None:
    sampler = StepSampler(23, batch_size=5, seed=0)
    assert sampler.steps_per_epoch == 4
    batches = take(sampler, 12)
    for epoch in range(3):
        pairs = [p for b in batches[4 * epoch : 4 * epoch + 4] for p in b]
        assert {e for e, _ in pairs} == {epoch}
        indices = [i for _, i in pairs]
        assert len(set(indices)) == 20 and set(indices) <= set(range(23))
    first, second = ([i for b in batches[k : k + 4] for _, i in b] for k in (0, 4))
    assert first != second  # a new order every epoch


def test_without_drop_last_every_sample_is_seen_once_per_epoch() -> None:
    sampler = StepSampler(7, batch_size=3, seed=1, drop_last=False)
    pairs = [p for b in take(sampler, 7) for p in b]  # 21 positions = 3 epochs
    for epoch in range(3):
        assert sorted(i for e, i in pairs if e == epoch) == list(range(7))
    assert sampler.epochs_seen(7) == 3


def test_ranks_are_disjoint_and_union_to_the_single_process_batch() -> None:
    world, per_rank = 4, 3
    single = take(StepSampler(50, batch_size=per_rank * world, seed=9), 10)
    ranks = [
        take(StepSampler(50, batch_size=per_rank, seed=9, rank=r, world_size=world), 10)
        for r in range(world)
    ]
    for step in range(10):
        parts = [set(ranks[r][step]) for r in range(world)]
        assert all(len(p) == per_rank for p in parts)
        assert set.union(*parts) == set(single[step])
        assert sum(len(p) for p in parts) == len(set.union(*parts))


def test_seed_changes_the_order_and_same_seed_repeats_it() -> None:
    a = take(StepSampler(100, batch_size=10, seed=1), 3)
    assert a == take(StepSampler(100, batch_size=10, seed=1), 3)
    assert a != take(StepSampler(100, batch_size=10, seed=2), 3)


def test_end_step_bounds_the_stream() -> None:
    sampler = StepSampler(10, batch_size=2, seed=0, start_step=3, end_step=8)
    assert len(sampler) == 5 and len(list(sampler)) == 5
    with pytest.raises(TypeError, match="endless"):
        len(StepSampler(10, batch_size=2, seed=0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 5, "batch_size": 3, "world_size": 2, "seed": 0}, "global batch of 6"),
        ({"num_samples": 5, "batch_size": 1, "rank": 2, "world_size": 2, "seed": 0}, "rank"),
        ({"num_samples": 5, "batch_size": 1, "seed": -1}, "seed"),
        ({"num_samples": 5, "batch_size": 0, "seed": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    n = kwargs.pop("num_samples")
    with pytest.raises(ValueError, match=match):
        StepSampler(n, **kwargs)


def test_an_order_function_replaces_the_permutation_and_keeps_the_guarantees() -> None:
    def order(epoch: int) -> np.ndarray:  # any pure function of the epoch
        return np.roll(np.arange(23)[::-1], epoch)

    sampler = StepSampler(23, batch_size=5, seed=0, order=order)
    batches = take(sampler, 8)
    assert [i for _, i in batches[0]] == [22, 21, 20, 19, 18]
    assert [i for _, i in batches[4]] == [0, 22, 21, 20, 19]  # epoch 1: rolled by one
    resumed = take(StepSampler(23, batch_size=5, seed=0, order=order, start_step=3), 5)
    assert resumed == batches[3:]
    ranks = [StepSampler(23, batch_size=1, seed=0, order=order, rank=r, world_size=5)
             for r in range(5)]  # fmt: skip
    assert [p for s in ranks for p in s.batch(6)] == batches[6]
    bad = StepSampler(23, batch_size=5, seed=0, order=lambda epoch: np.arange(22))
    with pytest.raises(ValueError, match=r"order: epoch 0 has 22 samples, not 23"):
        bad.batch(0)
