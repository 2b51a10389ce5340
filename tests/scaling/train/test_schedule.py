"""Learning-rate schedules: known values of every schedule, errors listing valid names."""

from __future__ import annotations

import functools
import itertools

import pytest

from scaling.errors import ScheduleError
from scaling.train.schedule import SCHEDULES, lr_at, scaled_lr, validate_schedule

BASE, WARM, MIN = 1e-4, 5e-7, 5e-6


def _lr(step: int, schedule: str, total: int = 800, warmup: int = 10, **kw: float) -> float:
    return lr_at(
        step,
        schedule=schedule,
        total_steps=total,
        warmup_steps=warmup,
        base_lr=BASE,
        warmup_lr=WARM,
        min_lr=MIN,
        **kw,
    )


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_linear_warmup_from_warmup_lr(schedule: str) -> None:
    assert _lr(0, schedule) == WARM
    assert _lr(5, schedule) == pytest.approx(WARM + 5 * (BASE - WARM) / 10)
    assert _lr(10, schedule) == pytest.approx(BASE)


def test_multistep_is_the_800_epoch_config() -> None:
    # ×0.1 at epoch 700 of 800: one step per "epoch" here
    assert _lr(699, "multistep") == BASE
    assert _lr(700, "multistep") == pytest.approx(BASE * 0.1)
    assert _lr(799, "multistep") == pytest.approx(BASE * 0.1)
    two = functools.partial(_lr, schedule="multistep", milestones=(0.5, 0.75), gamma=0.5)
    assert [two(399), two(400), two(600)] == pytest.approx([BASE, BASE / 2, BASE / 4])


def test_cosine_known_values() -> None:
    assert _lr(10, "cosine", total=110) == pytest.approx(BASE)
    assert _lr(60, "cosine", total=110) == pytest.approx((BASE + MIN) / 2)
    assert _lr(35, "cosine", total=110) == pytest.approx(MIN + (BASE - MIN) * (1 + 2**-0.5) / 2)
    assert _lr(110, "cosine", total=110) == pytest.approx(MIN)


def test_wsd_known_values() -> None:
    assert _lr(79, "wsd", total=100) == BASE
    assert _lr(80, "wsd", total=100) == BASE
    assert _lr(90, "wsd", total=100) == pytest.approx((BASE + MIN) / 2)
    assert _lr(100, "wsd", total=100) == pytest.approx(MIN)
    assert _lr(50, "wsd", total=100, decay_fraction=0.5) == BASE
    assert _lr(75, "wsd", total=100, decay_fraction=0.5) == pytest.approx((BASE + MIN) / 2)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_never_increases_after_warmup_and_works_without_warmup(schedule: str) -> None:
    lrs = [_lr(s, schedule, total=200, warmup=0) for s in range(200)]
    assert lrs[0] == BASE
    assert all(b <= a for a, b in itertools.pairwise(lrs))


def test_unknown_schedule_lists_valid_ones() -> None:
    with pytest.raises(ScheduleError, match=r"schedule: unknown schedule 'step'; valid: cosine, m"):
        _lr(0, "step")
    assert ScheduleError.exit_code == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "linear"}, r"finetune\.schedule: unknown schedule 'linear'"),
        ({"total_steps": 0}, r"finetune\.iterations: must be > 0, got 0"),
        ({"warmup_steps": 200}, r"finetune\.warmup_fraction: warm-up of 200 steps does not fit"),
        ({"milestones": (0.9, 0.5)}, r"finetune\.milestones: must be increasing fractions"),
        ({"milestones": (0.01,)}, r"finetune\.milestones: the first milestone \(step 1\) falls"),
        ({"schedule": "wsd", "decay_fraction": 0.0}, r"finetune\.decay_fraction: must be in"),
    ],
)
def test_validate_schedule_names_the_key(kwargs: dict, message: str) -> None:
    args = {"schedule": "multistep", "total_steps": 100, "warmup_steps": 5, **kwargs}
    with pytest.raises(ScheduleError, match=message):
        validate_schedule(**args, section="finetune")


def test_scaled_lr_is_linear_in_the_batch() -> None:
    assert scaled_lr(1e-4, 2048) == pytest.approx(4e-4)
    assert scaled_lr(1.25e-3, 512) == 1.25e-3
