"""The training recipes of a study: ``[pretrain]`` and ``[finetune]`` (with its targets).

Keyword-only frozen dataclasses, range-checked where they are built (every number: its
range, what 0 means where 0 is special, finite). Per-size overrides and the methods'
own sections are resolved by :class:`scaling.config.schema.StudyConfig`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from scaling.config.parse import check

AMP_MODES = ("auto", "bf16", "fp16", "fp32")
DECODE_MODES = ("fast", "exact", "gpu")
WEIGHT_DECAY_SETS = ("corrected", "released")
CHECKPOINTING = ("none", "block", "stage")  # scaling.model.family.CHECKPOINTING, torch-free

_ZERO = {
    "val_interval": "only at the end",
    "val_limit": "every image",
    "checkpoint_interval": "none but the final one",
    "mixup": "off",
    "cutmix": "off",
    "eval_interval": "only at the end",
    "clip_grad": "no clipping",
}
"""What 0 means for a setting where it is allowed and special."""
MAX_IMAGE_SIZE = 4096
"""Largest input side in pixels a recipe takes (the paper's largest is 224)."""


def check_recipe_numbers(recipe: Any) -> None:
    """The ranges the pre-training and fine-tuning recipes share."""
    for name in ("warmup_lr", "min_lr", "weight_decay"):
        value = getattr(recipe, name)
        check(value >= 0, name, f"must be >= 0, got {value}")
    check(
        recipe.clip_grad >= 0,
        "clip_grad",
        f"must be >= 0 (0: {_ZERO['clip_grad']}), got {recipe.clip_grad}",
    )
    check(
        0 < recipe.image_size <= MAX_IMAGE_SIZE,
        "image_size",
        f"must be in [1, {MAX_IMAGE_SIZE}] pixels, got {recipe.image_size}",
    )


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    batch_size: int = 2048
    """Effective batch size (all devices and accumulation steps together)."""
    accum_steps: int = 1
    """Gradient-accumulation steps per optimizer step."""
    base_lr: float = 1e-4
    """Peak learning rate per 512 images; scaled linearly with the batch size."""
    warmup_lr: float = 5e-7
    """Learning rate at step 0 of the warm-up, per 512 images."""
    min_lr: float = 5e-6
    """Final learning rate of cosine / warmup-stable-decay, per 512 images."""
    schedule: str = "multistep"
    """``multistep`` (×gamma at each milestone), ``cosine`` or ``wsd``."""
    warmup_fraction: float = 0.0125
    """Fraction of the iterations spent in linear warm-up (10 of 800 epochs)."""
    warmup_steps: int = 0
    """Linear warm-up in steps, the same for every length (set warmup_fraction = 0): the
    lengths of a study then share their schedule up to the first decay (prefix sharing)."""
    milestones: tuple[float, ...] = (0.875,)
    """Multistep milestones as fractions of training (7/8 as the 800-epoch config)."""
    gamma: float = 0.1
    """Multistep decay factor."""
    decay_fraction: float = 0.2
    """Warmup-stable-decay: fraction of training spent decaying."""
    weight_decay: float = 0.05
    """AdamW weight decay (none on biases, norms, mask token, logit scales, cpb MLPs)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    clip_grad: float = 5.0
    """Gradient-norm clip (0 disables)."""
    drop_path: float = 0.1
    """Stochastic depth rate of the encoder."""
    image_size: int = 192
    """Input side in pixels."""
    mask_patch_size: int = 32
    """Side of one masked block in pixels."""
    mask_ratio: float = 0.6
    """Fraction of mask blocks masked."""
    norm_target: bool = False
    """Normalize the target over a sliding window (released SwinV2 config)."""
    norm_target_window: int = 47
    """Window of the target normalization."""
    val_interval: int = 5000
    """Compute the validation loss every this many iterations (and at the end)."""
    val_limit: int = 0
    """Use only the first N validation images (0: all)."""
    checkpoint_interval: int = 5000
    """Write a resumable checkpoint every this many iterations."""
    log_interval: int = 50
    """Log the training loss every this many iterations."""
    amp: str = "auto"
    """``auto`` (bf16 on CUDA, fp32 on CPU), ``bf16``, ``fp16`` or ``fp32``."""
    compile: bool = False
    """torch.compile the model (pre-training and fine-tuning)."""
    channels_last: bool = True
    """Use channels-last memory format on CUDA (pre-training and fine-tuning)."""
    max_bad_fraction: float = 0.001
    """Stop when more than this fraction of samples failed to decode."""
    crop_scale: tuple[float, float] = (0.67, 1.0)
    """RandomResizedCrop area range."""
    decode: str = "fast"
    """JPEG decoding: ``fast`` (reduced-size DCT decode when a crop is downscaled ≥2×),
    ``exact`` (full decode then bilinear resize, as the released SimMIM code) or ``gpu``
    (nvJPEG on the cell's GPU, the same crops)."""
    weight_decay_set: str = "corrected"
    """Parameters AdamW decays: ``corrected`` exempts the SwinV2 position-bias MLP and logit
    scales as the released code intends; ``released`` decays them as its keyword match does."""
    activation_checkpointing: str = "none"
    """Recompute encoder activations in the backward: ``none``, per ``block`` or per ``stage``."""
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-size overrides of any field above: ``[pretrain.models."swinv2-l"] drop_path = 0.2``."""

    def __post_init__(self) -> None:
        check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        check(self.accum_steps > 0, "accum_steps", f"must be > 0, got {self.accum_steps}")
        check(self.base_lr > 0, "base_lr", f"must be > 0, got {self.base_lr}")
        check_recipe_numbers(self)
        check(
            0 <= self.warmup_fraction < 1,
            "warmup_fraction",
            f"must be in [0, 1), got {self.warmup_fraction}",
        )
        check(self.amp in AMP_MODES, "amp", f"must be one of {AMP_MODES}, got {self.amp!r}")
        self._check_pretrain_numbers()
        check(0 <= self.drop_path < 1, "drop_path", f"must be in [0, 1), got {self.drop_path}")
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(
            self.decode in DECODE_MODES,
            "decode",
            f"must be one of {DECODE_MODES}, got {self.decode!r}",
        )
        check(
            self.weight_decay_set in WEIGHT_DECAY_SETS,
            "weight_decay_set",
            f"must be one of {WEIGHT_DECAY_SETS}, got {self.weight_decay_set!r}",
        )
        check(
            not (self.warmup_steps and self.warmup_fraction),
            "warmup_steps",
            f"set one of warmup_steps ({self.warmup_steps}) and warmup_fraction "
            f"({self.warmup_fraction}); the other must be 0",
        )
        check(
            0 < self.max_bad_fraction < 1,
            "max_bad_fraction",
            f"must be in (0, 1), got {self.max_bad_fraction}",
        )
        check(
            self.activation_checkpointing in CHECKPOINTING,
            "activation_checkpointing",
            f"must be one of {CHECKPOINTING}, got {self.activation_checkpointing!r}",
        )
        from scaling.train.schedule import SCHEDULES

        check(
            self.schedule in SCHEDULES,
            "schedule",
            f"unknown schedule {self.schedule!r}; valid: {', '.join(sorted(SCHEDULES))}",
        )

    def _check_pretrain_numbers(self) -> None:
        check(0 < self.gamma <= 1, "gamma", f"must be in (0, 1], got {self.gamma}")
        check(
            0 < self.decay_fraction <= 1,
            "decay_fraction",
            f"must be in (0, 1], got {self.decay_fraction}",
        )
        check(
            self.norm_target_window >= 1 and self.norm_target_window % 2 == 1,
            "norm_target_window",
            f"must be an odd number of pixels >= 1, got {self.norm_target_window}",
        )
        for name in ("val_interval", "val_limit", "checkpoint_interval"):
            value = getattr(self, name)
            check(value >= 0, name, f"must be >= 0 (0: {_ZERO[name]}), got {value}")
        check(self.log_interval > 0, "log_interval", f"must be > 0, got {self.log_interval}")
        low, high = self.crop_scale
        check(
            0 < low <= high <= 1,
            "crop_scale",
            f"must be [min, max] with 0 < min <= max <= 1, got {list(self.crop_scale)}",
        )

    def warmup_for(self, iterations: int) -> int:
        """Warm-up steps of a run of ``iterations`` steps."""
        from scaling.train.schedule import warmup_steps_of

        return self.warmup_steps or warmup_steps_of(self.warmup_fraction, iterations)


@dataclass(frozen=True, kw_only=True)
class FinetuneTarget:
    """A downstream data set that every pre-trained encoder is fine-tuned on."""

    name: str
    """Short name: the ``target`` column of ``cells.parquet`` (e.g. ``inat18``)."""
    train: str
    """Manifest it trains on."""
    val: str
    """Manifest its top-1 / top-5 are measured on."""
    recipe: dict[str, Any] = field(default_factory=dict)
    """``[finetune.targets.recipe]``: overrides of any ``[finetune]`` field for this target
    (over the per-size ones)."""

    def __post_init__(self) -> None:
        check(
            bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*", self.name)),
            "name",
            f"must be letters, digits, '_', '.', '-', got {self.name!r}",
        )
        for key in ("targets", "models", "enabled"):
            check(key not in self.recipe, f"recipe.{key}", "cannot be set per target")


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    enabled: bool = True
    """Fine-tune each pre-trained encoder (off: pre-training only)."""
    epochs: float = 100.0
    """Fine-tuning length in epochs over ``data.finetune_train``."""
    batch_size: int = 2048
    """Effective fine-tuning batch size."""
    accum_steps: int = 1
    """Gradient-accumulation steps per optimizer step."""
    base_lr: float = 1.25e-3
    """Peak learning rate per 512 images."""
    warmup_fraction: float = 0.05
    """Fraction of fine-tuning in linear warm-up."""
    warmup_lr: float = 2.5e-7
    """Warm-up start learning rate per 512 images."""
    min_lr: float = 2.5e-7
    """Final cosine learning rate per 512 images."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    layer_decay: float = 0.75
    """Layer-wise learning-rate decay."""
    drop_path: float = 0.1
    """Stochastic depth rate."""
    image_size: int = 224
    """Fine-tuning resolution (the window grows with it, e.g. 12 → 14)."""
    label_smoothing: float = 0.1
    """Label smoothing."""
    mixup: float = 0.8
    """Mixup alpha (0 disables)."""
    cutmix: float = 1.0
    """CutMix alpha (0 disables)."""
    auto_augment: str = "rand-m9-mstd0.5-inc1"
    """timm RandAugment policy ('' disables)."""
    re_prob: float = 0.25
    """Random-erasing probability."""
    clip_grad: float = 5.0
    """Gradient-norm clip (0 disables)."""
    eval_interval: int = 0
    """Evaluate top-1/top-5 every this many iterations (0: only at the end)."""
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-size overrides of any field above: ``[finetune.models."swinv2-l"] layer_decay = 0.7``."""
    targets: tuple[FinetuneTarget, ...] = ()
    """``[[finetune.targets]]``: downstream data sets, each its own fine-tuning stage on every
    pre-trained encoder (none: one target, ``data.finetune_train`` / ``data.finetune_val``)."""

    def __post_init__(self) -> None:
        check(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        check(self.base_lr > 0, "base_lr", f"must be > 0, got {self.base_lr}")
        check_recipe_numbers(self)
        check(0 <= self.drop_path < 1, "drop_path", f"must be in [0, 1), got {self.drop_path}")
        for name in ("mixup", "cutmix", "eval_interval"):
            value = getattr(self, name)
            check(value >= 0, name, f"must be >= 0 (0: {_ZERO[name]}), got {value}")
        names = [t.name for t in self.targets]
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        check(dup is None, "targets", f"two targets are named {dup!r}")
        check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        check(self.accum_steps > 0, "accum_steps", f"must be > 0, got {self.accum_steps}")
        check(
            0 < self.layer_decay <= 1, "layer_decay", f"must be in (0, 1], got {self.layer_decay}"
        )
        check(0 <= self.re_prob <= 1, "re_prob", f"must be in [0, 1], got {self.re_prob}")
        check(
            0 <= self.label_smoothing < 1,
            "label_smoothing",
            f"must be in [0, 1), got {self.label_smoothing}",
        )
        # The fine-tune schedule is a cosine over cell.finetune_iterations(n_images)
        # steps, a count known only with the manifest of data.finetune_train (at trial
        # time). For a cosine, validate_schedule asks only that the warm-up fits:
        # warmup_steps_of(f, n) <= n holds for every n >= 1 exactly when 0 <= f < 1, so
        # this check is the whole schedule validation, made here without the data.
        check(
            0 <= self.warmup_fraction < 1,
            "warmup_fraction",
            f"must be in [0, 1), got {self.warmup_fraction}",
        )
