"""Study and cell configuration: keyword-only frozen dataclasses loaded from TOML.

A study file (``studies/*.toml``) has the tables ``[data]``, ``[grid]``,
``[pretrain]``, ``[finetune]`` and ``[resources]`` plus ``name`` and
``output_dir``. The grid is ``grid.models × grid.data × grid.iterations`` (×
``grid.seeds`` × ``grid.mask_ratios`` when given). Each cell is a
:class:`CellConfig`: the study with the grid axes fixed. Paths are made absolute
at load, relative to the working directory (Ray moves trials into their own
directories). Overrides come only through ``--set a.b=v``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from scaling.config import recipes, rules
from scaling.config.parse import ConfigError, check, from_dict, to_dict
from scaling.config.recipes import DiagnosticsConfig, LocalMIMConfig, MAEConfig

AMP_MODES = ("auto", "bf16", "fp16", "fp32")
DECODE_MODES = ("fast", "exact", "gpu")
WEIGHT_DECAY_SETS = ("corrected", "released")
CHECKPOINTING = ("none", "block", "stage")  # scaling.model.family.CHECKPOINTING, torch-free
PARALLELISM = ("ddp", "fsdp")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    manifest_dir: str
    """Directory holding the subset manifests, one ``<name>.parquet`` each."""
    root: str
    """Data root that manifest paths are relative to."""
    val: str = "in1k-val"
    """Subset on which the validation loss is measured (fixed masks)."""
    finetune_train: str = "in1k-100pct"
    """Subset the fine-tune trains on."""
    finetune_val: str = "in1k-val"
    """Subset on which fine-tuned top-1/top-5 are measured."""
    demo: bool = False
    """Build the embedded demo data set into ``root`` and ``manifest_dir`` when absent."""
    num_workers: int = 8
    """Data-loader worker processes per training process."""
    packed: str = ""
    """A pack (``mimscale subsets pack``) of every manifest the study reads, as a folder or
    URI: images are read from its shards instead of one file each ('' : files)."""
    shard_window: int = 4
    """Packed data: blocks shuffled together within an epoch (the shard-aware order)."""

    def __post_init__(self) -> None:
        check(
            0 <= self.num_workers <= 256,
            "num_workers",
            f"must be in [0, 256] (processes per training process), got {self.num_workers}",
        )
        check(self.shard_window >= 1, "shard_window", f"must be >= 1, got {self.shard_window}")
        for name in ("manifest_dir", "root"):
            check(bool(getattr(self, name)), name, "must not be empty")

    def manifest(self, subset: str) -> Path:
        return Path(self.manifest_dir) / f"{subset}.parquet"


@dataclass(frozen=True, kw_only=True)
class GridCell:
    """One (model, data, length) of an explicit cell list."""

    model: str
    """Model size."""
    data: str
    """Pre-training subset."""
    iterations: int
    """Pre-training length in optimizer steps."""
    method: str = ""
    """MIM method ('': every one of ``grid.methods``)."""

    def __post_init__(self) -> None:
        check(self.iterations > 0, "iterations", f"must be > 0, got {self.iterations}")


@dataclass(frozen=True, kw_only=True)
class GridExclude:
    """Leave out the grid points that match every field given (empty: any)."""

    model: str = ""
    """Model size to leave out ('' matches any)."""
    data: str = ""
    """Subset to leave out ('' matches any)."""
    iterations: int = 0
    """Length to leave out (0 matches any)."""
    method: str = ""
    """MIM method to leave out ('' matches any), e.g. MAE with the SwinV2 sizes."""

    def __post_init__(self) -> None:
        check(
            bool(self.model or self.data or self.iterations or self.method),
            "",
            "an exclude entry must name at least one of model, data, iterations, method",
        )

    def matches(self, model: str, data: str, iterations: int, method: str = "simmim") -> bool:
        return (
            self.model in ("", model)
            and self.data in ("", data)
            and self.iterations in (0, iterations)
            and self.method in ("", method)
        )


@dataclass(frozen=True, kw_only=True)
class GridConfig:
    models: tuple[str, ...] = ()
    """Model sizes (names in ``scaling.model.sizes.MODEL_SIZES``)."""
    data: tuple[str, ...] = ()
    """Pre-training subsets (manifest names)."""
    iterations: tuple[int, ...] = ()
    """Pre-training lengths in optimizer steps."""
    seeds: tuple[int, ...] = (0,)
    """Extra axis: seeds."""
    mask_ratios: tuple[float, ...] = ()
    """Extra axis: mask ratios (empty: ``pretrain.mask_ratio`` only)."""
    exclude: tuple[GridExclude, ...] = ()
    """``[[grid.exclude]]``: product points to leave out (a ragged grid). An entry may name
    values outside the grid (``--set grid.models=…`` narrows a grid without editing its
    exclusions); its model must be a registered size."""
    cells: tuple[GridCell, ...] = ()
    """``[[grid.cells]]``: an explicit list of (model, data, iterations) instead of the product."""
    share_prefix: bool = True
    """Train one trunk per (model, data, recipe, seed) and branch shorter lengths off it
    where that is exact (their lr schedules agree up to the fork step)."""
    methods: tuple[str, ...] = ("simmim",)
    """MIM methods (names in ``scaling.model.methods.METHODS``): ``simmim``, ``mae``,
    ``localmim``; each pre-trains every model it supports (``[[grid.exclude]]`` the rest)."""

    def __post_init__(self) -> None:
        axes = ("models", "data", "iterations")
        if self.cells:
            for name in axes:
                check(
                    not getattr(self, name),
                    name,
                    "give either grid.cells or the grid.models × data × iterations product",
                )
            keys = [(c.model, c.data, c.iterations) for c in self.cells]
            dup = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
            check(dup is None, "cells", f"lists {dup} twice")
        else:
            for name in axes:
                values = getattr(self, name)
                check(
                    len(values) > 0,
                    name,
                    "is missing or empty: give grid.models, grid.data and grid.iterations "
                    "(their product is the grid), or grid.cells",
                )
        check(len(self.methods) > 0, "methods", "must name at least one method")
        for name in (*axes, "seeds", "methods"):
            values = getattr(self, name)
            check(len(set(values)) == len(values), name, f"has duplicates: {list(values)}")
        for i, it in enumerate(self.iterations):
            check(it > 0, f"iterations[{i}]", f"must be > 0, got {it}")
        check(len(self.points()) > 0, "exclude", "leaves no cell in the grid")

    def _product(self) -> list[tuple[str, str, int, str]]:
        if self.cells:
            return [
                (c.model, c.data, c.iterations, m)
                for c in self.cells
                for m in ((c.method,) if c.method else self.methods)
            ]
        return list(itertools.product(self.models, self.data, self.iterations, self.methods))

    def points(self) -> list[tuple[str, str, int, str]]:
        """(model, data, iterations, method) of every cell, in grid order, exclusions left out."""
        return [p for p in self._product() if not any(r.matches(*p) for r in self.exclude)]

    def model_names(self) -> list[str]:
        """The models of the grid, in order, once each."""
        return list(dict.fromkeys(p[0] for p in self._product()))


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


@dataclass(frozen=True, kw_only=True)
class CellResources:
    cpus: float = 1.0
    """CPUs per training worker."""
    gpus: float = 0.0
    """GPUs per training worker."""
    workers: int = 1
    """Training workers (DDP ranks) per cell; > 1 runs Ray Train's TorchTrainer."""
    gpu_memory_gb: float = 80.0
    """Memory of one GPU in GB as sold (H100: 80); ``plan`` refuses cells that do not fit."""
    parallelism: str = "ddp"
    """``ddp`` (replicated weights) or ``fsdp`` (FSDP2: parameters, gradients, optimizer
    state sharded over the ranks)."""
    async_checkpoint: bool = True
    """A cell of several workers writes its checkpoint shards in the background (training
    goes on; the checkpoint is named once they are durable); false: it waits for them."""

    def __post_init__(self) -> None:
        check(self.cpus > 0, "cpus", f"must be > 0, got {self.cpus}")
        check(self.gpus >= 0, "gpus", f"must be >= 0, got {self.gpus}")
        check(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        check(
            0 < self.gpu_memory_gb <= 4096,
            "gpu_memory_gb",
            f"must be in (0, 4096], got {self.gpu_memory_gb}",
        )
        check(
            self.parallelism in PARALLELISM,
            "parallelism",
            f"must be one of {PARALLELISM}, got {self.parallelism!r}",
        )


@dataclass(frozen=True, kw_only=True)
class ResourcesConfig:
    cpus: float = 1.0
    """CPUs per training worker (default for every model)."""
    gpus: float = 0.0
    """GPUs per training worker (default for every model)."""
    workers: int = 1
    """Training workers per cell (default for every model)."""
    gpu_memory_gb: float = 80.0
    """Memory of one GPU in GB as sold (default for every model)."""
    parallelism: str = "ddp"
    """``ddp`` or ``fsdp`` (default for every model)."""
    async_checkpoint: bool = True
    """Background checkpoint writes of multi-worker cells (default for every model)."""
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-model overrides of the fields above, e.g. ``[resources.models."swinv2-g"]
    workers = 32``; a field not given there is the study's."""
    max_concurrent: int = 0
    """Cells running at once (0: as many as the cluster fits)."""
    max_failures: int = 3
    """Retries of a failed cell, each from its last checkpoint."""

    def __post_init__(self) -> None:
        self._default()
        for model in self.models:
            self.for_model(model)  # each override resolves (errors keyed models.<size>.<key>)
        check(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")
        check(
            self.max_concurrent >= 0,
            "max_concurrent",
            f"must be >= 0 (0: as many as the cluster fits), got {self.max_concurrent}",
        )

    def _default(self) -> CellResources:
        return CellResources(
            cpus=self.cpus,
            gpus=self.gpus,
            workers=self.workers,
            gpu_memory_gb=self.gpu_memory_gb,
            parallelism=self.parallelism,
            async_checkpoint=self.async_checkpoint,
        )

    def for_model(self, model: str) -> CellResources:
        """The study's resources with ``model``'s overrides."""
        default = self._default()
        overrides = self.models.get(model)
        if not overrides:
            return default
        return from_dict(CellResources, {**to_dict(default), **overrides}, f"models.{model}")


TRACKING_WANDB = ("off", "offline", "online")
RUN_NAME_FIELDS = ("kind", "stage_id", "model", "data", "iterations", "seed", "study")


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Experiment trackers every stage logs to (rank 0), through the libraries' own APIs.

    Not part of any stage's id: switching a tracker on reruns nothing.
    """

    tensorboard: bool = False
    """Write TensorBoard event files under ``<output_dir>/tracking/tensorboard``."""
    mlflow: str | None = None
    """MLflow tracking URI; ``""``: a local store, ``<output_dir>/tracking/mlflow.db`` (SQLite,
    MLflow's own local backend)."""
    wandb: str = "off"
    """Weights & Biases: ``off``, ``offline`` (files under output_dir, no network) or ``online``."""
    project: str = ""
    """Project (W&B) / experiment (MLflow) name; empty: the study's name."""
    run_name: str = "{kind}-{model}-{data}-{iterations}-{stage_id}"
    """A run's name; placeholders: kind, stage_id, model, data, iterations, seed, study."""
    log_upload_s: float = 60.0
    """Seconds between uploads of a running stage's log to a remote (object-store) output."""

    def __post_init__(self) -> None:
        check(
            self.wandb in TRACKING_WANDB,
            "wandb",
            f"must be one of {TRACKING_WANDB}, got {self.wandb!r}",
        )
        try:
            self.run_name.format(**dict.fromkeys(RUN_NAME_FIELDS, "x"))
        except (KeyError, IndexError, ValueError) as err:
            check(
                False,
                "run_name",
                f"{self.run_name!r} is not a valid template ({type(err).__name__}: {err}); "
                f"placeholders: {', '.join(RUN_NAME_FIELDS)}",
            )
        check(
            0 < self.log_upload_s <= 86400,
            "log_upload_s",
            f"must be in (0, 86400], got {self.log_upload_s}",
        )

    @property
    def enabled(self) -> list[str]:
        """The trackers switched on, by their ``[tracking]`` key."""
        on = {"tensorboard": self.tensorboard, "mlflow": self.mlflow is not None}
        return [k for k, v in {**on, "wandb": self.wandb != "off"}.items() if v]

    def resolved(self, study: str, output_dir: str) -> TrackingConfig:
        """With the study's name as default project and the local MLflow store made a URI."""
        mlflow = self.mlflow
        if mlflow == "":
            check(
                "://" not in output_dir or output_dir.startswith("file://"),
                "mlflow",
                f'"" means a local file store under output_dir, but output_dir is '
                f"{output_dir}; give a tracking server URI (e.g. http://host:5000)",
            )
            local = output_dir.removeprefix("file://").rstrip("/")
            mlflow = "sqlite:///" + str(Path(local, "tracking", "mlflow.db").absolute())
        return dataclasses.replace(self, project=self.project or study, mlflow=mlflow)


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    name: str
    """Study name (used in reports)."""
    output_dir: str
    """Where results go: a local path or a pyarrow/fsspec URI."""
    data: DataConfig
    grid: GridConfig
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment trackers (``[tracking]``); not part of any stage's id."""
    mae: MAEConfig = field(default_factory=MAEConfig)
    """``[mae]``: MAE's own recipe (with ``mae`` in ``grid.methods``)."""
    localmim: LocalMIMConfig = field(default_factory=LocalMIMConfig)
    """``[localmim]``: LocalMIM's own recipe (with ``localmim`` in ``grid.methods``)."""
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    """``[diagnostics]``: the representation-diagnostics stage after each pre-training."""
    source: str = ""
    """The file the study was loaded from (set by the loader)."""

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "must not be empty")
        check(bool(self.output_dir), "output_dir", "must not be empty")
        from scaling.model.sizes import MODEL_SIZES

        valid = ", ".join(MODEL_SIZES)
        for key, model in self._model_keys():
            check(model in MODEL_SIZES, key, f"unknown model {model!r}; valid: {valid}")
        for i, rule in enumerate(self.grid.exclude):
            check(
                rule.model in ("", *MODEL_SIZES),
                f"grid.exclude[{i}].model",
                f"unknown model {rule.model!r}; valid: {valid}",
            )
        for section in ("pretrain", "finetune", "resources", "mae", "localmim"):
            for model in getattr(self, section).models:  # may name sizes outside the grid
                check(
                    model in MODEL_SIZES,
                    f"{section}.models.{model}",
                    f"unknown model {model!r}; valid: {valid}",
                )
        ratios = tuple((f"grid.mask_ratios[{i}]", r) for i, r in enumerate(self.grid.mask_ratios))
        for key, model in self._model_keys():
            pretrain, finetune = self.pretrain_for(model), self.finetune_for(model)
            rules.check_pretrain_schedule(pretrain, self._length_keys(model))
            rules.check_model_fits(model, pretrain, finetune, key, ratios)
            _check_batches(pretrain, finetune, self.resources.for_model(model))
        self._check_methods(ratios)
        self._check_targets()
        try:
            self.tracking.resolved(self.name, self.output_dir)
        except ConfigError as err:
            raise ConfigError(f"tracking.{err.key}", err.message) from None

    def _check_targets(self) -> None:
        """Every target's recipe resolves for every model, fits it and splits its batch."""
        if not self.finetune.enabled:
            return
        for key, target in self.targets():
            for _, model in self._model_keys():
                finetune = self.finetune_for_target(model, key, target)
                rules.check_model_fits(model, self.pretrain_for(model), finetune, key)
                _check_batches(self.pretrain_for(model), finetune, self.resources.for_model(model))

    def _model_keys(self) -> list[tuple[str, str]]:
        """(dotted key, model) of each model of the grid, first mention."""
        g = self.grid
        if g.cells:
            keys = [(f"grid.cells[{i}].model", c.model) for i, c in enumerate(g.cells)]
        else:
            keys = [(f"grid.models[{i}]", m) for i, m in enumerate(g.models)]
        return list({m: (k, m) for k, m in reversed(keys)}.values())[::-1]

    def _length_keys(self, model: str) -> list[tuple[str, int]]:
        """(dotted key, iterations) of each length ``model`` trains for."""
        g = self.grid
        if g.cells:
            return [
                (f"grid.cells[{i}].iterations", c.iterations)
                for i, c in enumerate(g.cells)
                if c.model == model
            ]
        lengths = {it for m, _, it, _ in g.points() if m == model}
        return [(f"grid.iterations[{i}]", it) for i, it in enumerate(g.iterations) if it in lengths]

    def pretrain_for(self, model: str) -> PretrainConfig:
        """The pre-training recipe of ``model``: the study's, with its per-size overrides."""
        return _resolved(self.pretrain, model, "pretrain")

    def targets(self) -> list[tuple[str, FinetuneTarget]]:
        """(dotted key, target) of every fine-tuning target; the implicit one from ``data``."""
        if self.finetune.targets:
            return [(f"finetune.targets[{i}]", t) for i, t in enumerate(self.finetune.targets)]
        d = self.data
        implicit = FinetuneTarget(name=d.finetune_train, train=d.finetune_train, val=d.finetune_val)
        return [("data.finetune_train", implicit)]

    def finetune_for_target(self, model: str, key: str, target: FinetuneTarget) -> FinetuneConfig:
        """The recipe of ``model`` on ``target``: study, per-size overrides, target overrides."""
        base = dataclasses.replace(self.finetune_for(model), targets=())
        if not target.recipe:
            return base
        return from_dict(FinetuneConfig, {**to_dict(base), **target.recipe}, f"{key}.recipe")

    def finetune_for(self, model: str) -> FinetuneConfig:
        """The fine-tuning recipe of ``model``: the study's, with its per-size overrides."""
        return _resolved(self.finetune, model, "finetune")

    def recipe_for(self, method: str, model: str) -> Any:
        """``method``'s own recipe for ``model`` (SimMIM's is ``pretrain_for(model)``)."""
        section = "pretrain" if method == "simmim" else method
        return _resolved(getattr(self, section), model, section)

    def _check_methods(self, ratios: tuple[tuple[str, float], ...]) -> None:
        """Every method of the grid pre-trains its models (errors name grid.methods[i])."""
        g = self.grid
        keys = {m: f"grid.methods[{i}]" for i, m in enumerate(g.methods)}
        keys |= {c.method: f"grid.cells[{i}].method" for i, c in enumerate(g.cells) if c.method}
        model_keys = dict((m, k) for k, m in self._model_keys())
        points = [(model_keys[p[0]], p) for p in g.points()]
        recipes.check_methods(points, keys, self.recipe_for, self.pretrain_for, ratios)

    def cells(self) -> list[CellConfig]:
        """The grid in a stable order: model, data, iterations, seed, mask ratio."""
        ratios = self.grid.mask_ratios or (None,)
        tracking = self.tracking.resolved(self.name, self.output_dir)
        out = []
        g = self.grid
        targets = self.targets()
        for (m, d, it, meth), s, r, (key, t) in itertools.product(
            g.points(), g.seeds, ratios, targets
        ):
            recipes_of = {
                "pretrain": self.pretrain_for(m),
                "mae": self.recipe_for("mae", m),
                "localmim": self.recipe_for("localmim", m),
            }
            if r is not None:  # the mask-ratio axis sets the cell's own method's ratio
                section = "pretrain" if meth == "simmim" else meth
                recipes_of[section] = dataclasses.replace(recipes_of[section], mask_ratio=r)
            out.append(
                CellConfig(
                    model=m,
                    data=d,
                    iterations=it,
                    seed=s,
                    method=meth,
                    data_config=dataclasses.replace(
                        self.data, finetune_train=t.train, finetune_val=t.val
                    ),
                    **recipes_of,
                    finetune=self.finetune_for_target(m, key, t),
                    target=t.name,
                    diagnostics=self.diagnostics,
                    resources=self.resources.for_model(m),
                    tracking=tracking,
                )
            )
        return out


T = TypeVar("T", PretrainConfig, FinetuneConfig, MAEConfig, LocalMIMConfig)


def _resolved(base: T, model: str, section: str) -> T:
    """``base`` with the overrides of ``[<section>.models."<model>"]`` (and none nested)."""
    overrides = base.models.get(model)
    if not overrides:
        return dataclasses.replace(base, models={}) if base.models else base
    prefix = f"{section}.models.{model}"
    check("models" not in overrides, f"{prefix}.models", "per-size recipes do not nest")
    merged = {**to_dict(base), **overrides, "models": {}}
    return from_dict(type(base), merged, prefix)


@dataclass(frozen=True, kw_only=True)
class CellConfig:
    model: str
    """Model size."""
    data: str
    """Pre-training subset."""
    iterations: int
    """Pre-training optimizer steps."""
    seed: int = 0
    """Seed of sampling, augmentation and masks."""
    data_config: DataConfig
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    resources: CellResources = field(default_factory=CellResources)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """The study's trackers, resolved (project named, local MLflow store as a URI)."""
    method: str = "simmim"
    """MIM method of the pre-training (``scaling.model.methods.METHODS``)."""
    target: str = ""
    """Name of the fine-tuning target (``''``: ``data.finetune_train``)."""
    mae: MAEConfig = field(default_factory=MAEConfig)
    """MAE's recipe, resolved for the model (read when ``method`` is ``mae``)."""
    localmim: LocalMIMConfig = field(default_factory=LocalMIMConfig)
    """LocalMIM's recipe, resolved for the model (read when ``method`` is ``localmim``)."""
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    """The diagnostics stage's settings."""

    def __post_init__(self) -> None:
        check(self.iterations > 0, "iterations", f"must be > 0, got {self.iterations}")
        rules.check_pretrain_schedule(self.pretrain, [("iterations", self.iterations)])
        rules.check_model_fits(self.model, self.pretrain, self.finetune, "model")
        _check_batches(self.pretrain, self.finetune, self.resources)
        point = ("model", (self.model, self.data, self.iterations, self.method))
        recipes.check_methods(
            [point], {self.method: "method"}, lambda m, _: self.recipe, lambda _: self.pretrain, ()
        )

    @property
    def recipe(self) -> Any:
        """The method's own recipe: ``pretrain`` for SimMIM, else ``mae`` / ``localmim``."""
        return self.pretrain if self.method == "simmim" else getattr(self, self.method)

    @property
    def mask_ratio(self) -> float:
        """The fraction of tokens (or mask blocks) the method masks."""
        return self.recipe.mask_ratio

    def row_fields(self) -> dict[str, Any]:
        """The cell's columns of ``cells.parquet`` known before it runs."""
        return {
            "model": self.model,
            "data": self.data,
            "iterations": self.iterations,
            "batch_size": self.pretrain.batch_size,
            "seed": self.seed,
            "mask_ratio": self.mask_ratio,
            "method": self.method,
            "target": self.target or self.data_config.finetune_train,
        }

    def subsets(self) -> list[str]:
        """Every manifest the cell reads."""
        names = [self.data, self.data_config.val]
        if self.finetune.enabled:
            names += [self.data_config.finetune_train, self.data_config.finetune_val]
        return list(dict.fromkeys(names))

    def epochs_seen(self, n_train_images: int) -> float:
        return self.iterations * self.pretrain.batch_size / max(n_train_images, 1)

    def finetune_iterations(self, n_images: int) -> int:
        return max(1, math.ceil(self.finetune.epochs * n_images / self.finetune.batch_size))


def _check_batches(pretrain: PretrainConfig, finetune: FinetuneConfig, r: CellResources) -> None:
    """Both batches split over accumulation steps and a cell's ranks."""
    rules.micro_batch(pretrain.batch_size, pretrain.accum_steps, r.workers, "pretrain")
    if finetune.enabled:
        rules.micro_batch(finetune.batch_size, finetune.accum_steps, r.workers, "finetune")
