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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.config import rules
from scaling.config.parse import check

AMP_MODES = ("auto", "bf16", "fp16", "fp32")


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

    def __post_init__(self) -> None:
        check(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        for name in ("manifest_dir", "root"):
            check(bool(getattr(self, name)), name, "must not be empty")

    def manifest(self, subset: str) -> Path:
        return Path(self.manifest_dir) / f"{subset}.parquet"


@dataclass(frozen=True, kw_only=True)
class GridConfig:
    models: tuple[str, ...]
    """Model sizes (names in ``scaling.model.sizes.MODEL_SIZES``)."""
    data: tuple[str, ...]
    """Pre-training subsets (manifest names)."""
    iterations: tuple[int, ...]
    """Pre-training lengths in optimizer steps."""
    seeds: tuple[int, ...] = (0,)
    """Extra axis: seeds."""
    mask_ratios: tuple[float, ...] = ()
    """Extra axis: mask ratios (empty: ``pretrain.mask_ratio`` only)."""

    def __post_init__(self) -> None:
        for name in ("models", "data", "iterations", "seeds"):
            values = getattr(self, name)
            check(len(values) > 0, name, "must list at least one value (the grid is empty)")
            check(len(set(values)) == len(values), name, f"has duplicates: {list(values)}")
        for i, it in enumerate(self.iterations):
            check(it > 0, f"iterations[{i}]", f"must be > 0, got {it}")


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

    def __post_init__(self) -> None:
        check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        check(self.accum_steps > 0, "accum_steps", f"must be > 0, got {self.accum_steps}")
        check(self.base_lr > 0, "base_lr", f"must be > 0, got {self.base_lr}")
        check(
            0 <= self.warmup_fraction < 1,
            "warmup_fraction",
            f"must be in [0, 1), got {self.warmup_fraction}",
        )
        check(self.amp in AMP_MODES, "amp", f"must be one of {AMP_MODES}, got {self.amp!r}")
        check(self.image_size > 0, "image_size", f"must be > 0, got {self.image_size}")
        check(self.val_interval >= 0, "val_interval", f"must be >= 0, got {self.val_interval}")
        check(self.clip_grad >= 0, "clip_grad", f"must be >= 0, got {self.clip_grad}")
        check(0 <= self.drop_path < 1, "drop_path", f"must be in [0, 1), got {self.drop_path}")
        check(
            0 < self.max_bad_fraction < 1,
            "max_bad_fraction",
            f"must be in (0, 1), got {self.max_bad_fraction}",
        )
        from scaling.train.schedule import SCHEDULES

        check(
            self.schedule in SCHEDULES,
            "schedule",
            f"unknown schedule {self.schedule!r}; valid: {', '.join(sorted(SCHEDULES))}",
        )


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

    def __post_init__(self) -> None:
        check(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
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

    def __post_init__(self) -> None:
        check(self.cpus > 0, "cpus", f"must be > 0, got {self.cpus}")
        check(self.gpus >= 0, "gpus", f"must be >= 0, got {self.gpus}")
        check(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")


@dataclass(frozen=True, kw_only=True)
class ResourcesConfig:
    cpus: float = 1.0
    """CPUs per training worker (default for every model)."""
    gpus: float = 0.0
    """GPUs per training worker (default for every model)."""
    workers: int = 1
    """Training workers per cell (default for every model)."""
    models: dict[str, CellResources] = field(default_factory=dict)
    """Per-model overrides, e.g. ``[resources.models."swinv2-g"] gpus = 1, workers = 8``."""
    max_concurrent: int = 0
    """Cells running at once (0: as many as the cluster fits)."""
    max_failures: int = 3
    """Retries of a failed cell, each from its last checkpoint."""

    def __post_init__(self) -> None:
        CellResources(cpus=self.cpus, gpus=self.gpus, workers=self.workers)
        check(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")

    def for_model(self, model: str) -> CellResources:
        default = CellResources(cpus=self.cpus, gpus=self.gpus, workers=self.workers)
        return self.models.get(model, default)


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
    source: str = ""
    """The file the study was loaded from (set by the loader)."""

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "must not be empty")
        from scaling.model.sizes import MODEL_SIZES

        for i, model in enumerate(self.grid.models):
            check(
                model in MODEL_SIZES,
                f"grid.models[{i}]",
                f"unknown model {model!r}; valid: {', '.join(MODEL_SIZES)}",
            )
        for model in self.resources.models:  # may name sizes outside the grid (--set grids)
            check(
                model in MODEL_SIZES,
                f"resources.models.{model}",
                f"unknown model {model!r}; valid: {', '.join(MODEL_SIZES)}",
            )
        check(bool(self.output_dir), "output_dir", "must not be empty")
        rules.check_pretrain_schedule(
            self.pretrain,
            [(f"grid.iterations[{i}]", it) for i, it in enumerate(self.grid.iterations)],
        )
        ratios = tuple((f"grid.mask_ratios[{i}]", r) for i, r in enumerate(self.grid.mask_ratios))
        for i, model in enumerate(self.grid.models):
            where = f"grid.models[{i}]"
            rules.check_model_fits(model, self.pretrain, self.finetune, where, ratios)
            _check_batches(self.pretrain, self.finetune, self.resources.for_model(model))

    def cells(self) -> list[CellConfig]:
        """The grid in a stable order: model, data, iterations, seed, mask ratio."""
        ratios = self.grid.mask_ratios or (self.pretrain.mask_ratio,)
        return [
            CellConfig(
                model=m,
                data=d,
                iterations=it,
                seed=s,
                data_config=self.data,
                pretrain=dataclasses.replace(self.pretrain, mask_ratio=r),
                finetune=self.finetune,
                resources=self.resources.for_model(m),
            )
            for m, d, it, s, r in itertools.product(
                self.grid.models, self.grid.data, self.grid.iterations, self.grid.seeds, ratios
            )
        ]


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

    def __post_init__(self) -> None:
        check(self.iterations > 0, "iterations", f"must be > 0, got {self.iterations}")
        rules.check_pretrain_schedule(self.pretrain, [("iterations", self.iterations)])
        rules.check_model_fits(self.model, self.pretrain, self.finetune, "model")
        _check_batches(self.pretrain, self.finetune, self.resources)

    def row_fields(self) -> dict[str, Any]:
        """The cell's columns of ``cells.parquet`` known before it runs."""
        return {
            "model": self.model,
            "data": self.data,
            "iterations": self.iterations,
            "batch_size": self.pretrain.batch_size,
            "seed": self.seed,
            "mask_ratio": self.pretrain.mask_ratio,
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
