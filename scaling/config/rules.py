"""The cross-field rules of a study, each defined once and checked at load with its key.

A rule that needs more than one field — a schedule at every grid length, a model at
the recipe's image, window and mask sizes, a batch that splits over accumulation
steps and ranks — lives here and raises :class:`~scaling.config.parse.ConfigError`
with the dotted key; the loader adds the file and line. The training code calls the
same functions (:func:`micro_batch`), so a rule never has two versions. The
definitions they rely on are torch-free leaves of the other rooms: the model
registry (:mod:`scaling.model.sizes`), the mask geometry
(:func:`scaling.data.masking.check_mask_geometry`) and the lr schedules
(:mod:`scaling.train.schedule`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scaling.config.parse import ConfigError
from scaling.errors import UserError

if TYPE_CHECKING:
    from scaling.config.schema import FinetuneConfig, PretrainConfig


def _located(err: UserError, suffix: str = "") -> ConfigError:
    key, _, message = str(err).partition(": ")  # "<section>.<field>: <what is wrong>"
    return ConfigError(key, message + suffix)


def micro_batch(batch_size: int, accum_steps: int, workers: int, section: str) -> int:
    """Images per rank per micro-batch; the batch must split evenly."""
    micro, rest = divmod(batch_size, accum_steps * workers)
    if rest == 0 and micro > 0:
        return micro
    if workers == 1:
        raise ConfigError(
            f"{section}.accum_steps", f"must divide batch_size {batch_size}, got {accum_steps}"
        )
    raise ConfigError(
        f"{section}.batch_size",
        f"{batch_size} is not divisible by accum_steps × workers = {accum_steps} × {workers}",
    )


def check_pretrain_schedule(pretrain: PretrainConfig, lengths: list[tuple[str, int]]) -> None:
    """The pre-training schedule is valid at each length (``(key, iterations)`` pairs);
    a check that depends on the length names the length it failed for."""
    from scaling.train.schedule import validate_schedule, validate_schedule_shape

    p = pretrain
    try:
        validate_schedule_shape(
            schedule=p.schedule,
            milestones=p.milestones,
            decay_fraction=p.decay_fraction,
            section="pretrain",
        )
    except UserError as err:
        raise _located(err) from None
    for where, iterations in lengths:
        try:
            validate_schedule(
                schedule=p.schedule,
                total_steps=iterations,
                warmup_steps=p.warmup_for(iterations),
                milestones=p.milestones,
                decay_fraction=p.decay_fraction,
                section="pretrain",
                warmup_key="warmup_steps" if p.warmup_steps else "warmup_fraction",
            )
        except UserError as err:
            raise _located(err, f" for {where} = {iterations}") from None


def check_model_fits(
    model: str,
    pretrain: PretrainConfig,
    finetune: FinetuneConfig,
    where: str,
    mask_ratios: tuple[tuple[str, float], ...] = (),
) -> None:
    """The model runs at the recipe's image, window and mask sizes (located errors).

    ``mask_ratios``: ``(key, ratio)`` of the grid's mask-ratio axis, when it has one.
    """
    from scaling.data.masking import check_mask_geometry
    from scaling.model.sizes import finetune_window, validate_sizes

    try:
        spec = validate_sizes(model, pretrain.image_size)
        for key, ratio in mask_ratios or (("pretrain.mask_ratio", pretrain.mask_ratio),):
            try:
                check_mask_geometry(
                    image_size=pretrain.image_size,
                    mask_patch_size=pretrain.mask_patch_size,
                    model_patch_size=spec.patch_size,
                    mask_ratio=ratio,
                    section="pretrain",
                    model=model,
                )
            except UserError as err:
                if "mask_ratio" in str(err).split(":")[0]:
                    raise ConfigError(key, str(err).partition(": ")[2]) from None
                raise
        if finetune.enabled:
            window = finetune_window(spec, finetune.image_size, pretrain.image_size)
            validate_sizes(
                model, finetune.image_size, section="finetune", window_size=window or None
            )
    except ConfigError:
        raise
    except UserError as err:
        raise _located(err, f" ({where} = {model!r})") from None
