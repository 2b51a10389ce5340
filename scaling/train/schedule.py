"""Learning-rate schedules as pure functions of the optimizer step.

Every schedule starts with the same linear warm-up from ``warmup_lr`` to
``base_lr`` over ``warmup_steps`` (as timm's schedulers in the released SimMIM
code: step t < warmup gets warmup_lr + t·(base_lr − warmup_lr)/warmup_steps),
then:

- ``multistep``: base_lr × gamma^(milestones passed); a milestone is a fraction
  of ``total_steps`` and takes effect at its step (SimMIM's 800-epoch config:
  ×0.1 at epoch 700, i.e. 7/8 of training).
- ``cosine``: half a cosine from base_lr down to min_lr between the end of the
  warm-up and ``total_steps``.
- ``wsd`` (warmup-stable-decay): base_lr until the last ``decay_fraction`` of
  training, then linear to min_lr at ``total_steps``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass

from scaling.errors import ScheduleError


@dataclass(frozen=True, kw_only=True)
class _After:
    """What a schedule needs after the warm-up."""

    total_steps: int
    warmup_steps: int
    base_lr: float
    min_lr: float
    milestones: tuple[float, ...]
    gamma: float
    decay_fraction: float


def _multistep(step: int, s: _After) -> float:
    boundaries = [round(m * s.total_steps) for m in s.milestones]
    return s.base_lr * s.gamma ** bisect.bisect_right(boundaries, step)


def _cosine(step: int, s: _After) -> float:
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.total_steps - s.warmup_steps))
    return s.min_lr + 0.5 * (s.base_lr - s.min_lr) * (1.0 + math.cos(math.pi * progress))


def _wsd(step: int, s: _After) -> float:
    start = s.total_steps - round(s.decay_fraction * s.total_steps)
    if step < start:
        return s.base_lr
    progress = min(1.0, (step - start) / max(1, s.total_steps - start))
    return s.base_lr + (s.min_lr - s.base_lr) * progress


SCHEDULES: dict[str, Callable[[int, _After], float]] = {
    "multistep": _multistep,
    "cosine": _cosine,
    "wsd": _wsd,
}


def get_schedule(name: str, *, key: str = "schedule") -> Callable[[int, _After], float]:
    """The schedule ``name``; an unknown name lists the valid ones."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ScheduleError(
            f"{key}: unknown schedule {name!r}; valid: {', '.join(sorted(SCHEDULES))}"
        ) from None


def warmup_steps_of(warmup_fraction: float, total_steps: int) -> int:
    """Steps of linear warm-up of a ``total_steps`` run, as the training loops round them."""
    return round(warmup_fraction * total_steps)


def validate_schedule_shape(
    *,
    schedule: str,
    milestones: tuple[float, ...] = (7 / 8,),
    decay_fraction: float = 0.2,
    section: str = "pretrain",
) -> None:
    """The checks of :func:`validate_schedule` that hold for any training length."""
    get_schedule(schedule, key=f"{section}.schedule")
    if schedule == "multistep" and (
        list(milestones) != sorted(milestones) or not all(0 < m <= 1 for m in milestones)
    ):
        raise ScheduleError(
            f"{section}.milestones: must be increasing fractions in (0, 1], got {list(milestones)}"
        )
    if schedule == "wsd" and not 0 < decay_fraction <= 1:
        raise ScheduleError(f"{section}.decay_fraction: must be in (0, 1], got {decay_fraction}")


def validate_schedule(
    *,
    schedule: str,
    total_steps: int,
    warmup_steps: int,
    milestones: tuple[float, ...] = (7 / 8,),
    decay_fraction: float = 0.2,
    section: str = "pretrain",
    warmup_key: str = "warmup_fraction",
) -> None:
    """Check schedule arguments; errors name ``<section>.<field>``."""
    validate_schedule_shape(
        schedule=schedule, milestones=milestones, decay_fraction=decay_fraction, section=section
    )
    if total_steps <= 0:
        raise ScheduleError(f"{section}.iterations: must be > 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ScheduleError(
            f"{section}.{warmup_key}: warm-up of {warmup_steps} steps does not fit in "
            f"{total_steps} steps"
        )
    if schedule == "multistep" and milestones:
        first = round(milestones[0] * total_steps)
        if first < warmup_steps:
            raise ScheduleError(
                f"{section}.milestones: the first milestone (step {first}) falls inside the "
                f"warm-up ({warmup_steps} steps)"
            )


def lr_at(
    step: int,
    *,
    schedule: str,
    total_steps: int,
    warmup_steps: int,
    base_lr: float,
    warmup_lr: float = 5e-7,
    min_lr: float = 5e-6,
    milestones: tuple[float, ...] = (7 / 8,),
    gamma: float = 0.1,
    decay_fraction: float = 0.2,
) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of a ``total_steps`` run."""
    fn = get_schedule(schedule)
    if step < warmup_steps:
        return warmup_lr + step * (base_lr - warmup_lr) / warmup_steps
    after = _After(
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        base_lr=base_lr,
        min_lr=min_lr,
        milestones=tuple(milestones),
        gamma=gamma,
        decay_fraction=decay_fraction,
    )
    return fn(step, after)


def scaled_lr(base_lr_per_512: float, batch_size: int) -> float:
    """The linear scaling rule of SimMIM: ``base · batch / 512``."""
    return base_lr_per_512 * batch_size / 512


def prefix_step(
    *,
    schedule: str,
    total_steps: int,
    warmup_steps: int,
    milestones: tuple[float, ...] = (7 / 8,),
    decay_fraction: float = 0.2,
) -> int:
    """How many first steps of a ``total_steps`` run any longer run shares exactly.

    lr(t; L) for t below the result is the same for every length L' ≥ L with the same
    warm-up in steps: the warm-up, then ``base_lr`` until the run's first decay —
    multistep: its first milestone; WSD: the start of its decay. A cosine decays from
    the end of the warm-up on a length-dependent curve: nothing worth sharing (0).
    """
    if schedule == "multistep":
        return round(milestones[0] * total_steps) if milestones else total_steps
    if schedule == "wsd":
        return total_steps - round(decay_fraction * total_steps)
    return 0


def fork_step(short: int, long: int, warmups: tuple[int, int], **schedule: object) -> int:
    """The first step where runs of ``short`` and ``long`` steps may differ (0: none shared).

    ``warmups``: their warm-up steps (they must agree, or the runs part at step 0);
    ``schedule``: the other arguments of :func:`prefix_step`.
    """
    if short > long:
        short, long = long, short
        warmups = (warmups[1], warmups[0])
    if warmups[0] != warmups[1]:
        return 0
    steps = [prefix_step(total_steps=n, warmup_steps=warmups[0], **schedule) for n in (short, long)]
    return max(0, min(short, *steps))
