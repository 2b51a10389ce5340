"""Study and cell configuration: keyword-only frozen dataclasses loaded from TOML.

A study file (``studies/*.toml``) has the tables ``[data]``, ``[grid]``,
``[pretrain]``, ``[finetune]`` and ``[resources]`` plus ``name`` and
``output_dir``. The grid is ``grid.models × grid.data × grid.iterations`` (×
``grid.seeds`` × ``grid.mask_ratios`` when given). Each cell is a
:class:`CellConfig`: the study with the grid axes fixed. Paths are made absolute
at load, relative to the working directory (Ray moves trials into their own
directories). Overrides come only through ``--set a.b=v``.

The sections live in their own modules and are re-exported here: the recipes in
:mod:`scaling.config.training`, ``[resources]`` in :mod:`scaling.config.resources`,
``[tracking]`` in :mod:`scaling.config.tracking`, the methods' and diagnostics'
sections in :mod:`scaling.config.recipes`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from scaling.config import recipes, rules
from scaling.config.parse import ConfigError, check, from_dict, to_dict
from scaling.config.recipes import DiagnosticsConfig, LocalMIMConfig, MAEConfig
from scaling.config.resources import PARALLELISM, CellResources, ResourcesConfig
from scaling.config.tracking import RUN_NAME_FIELDS, TRACKING_WANDB, TrackingConfig
from scaling.config.training import (
    AMP_MODES,
    CHECKPOINTING,
    DECODE_MODES,
    MAX_IMAGE_SIZE,
    WEIGHT_DECAY_SETS,
    FinetuneConfig,
    FinetuneTarget,
    PretrainConfig,
)

__all__ = [
    "AMP_MODES",
    "CHECKPOINTING",
    "DECODE_MODES",
    "MAX_IMAGE_SIZE",
    "PARALLELISM",
    "RUN_NAME_FIELDS",
    "TRACKING_WANDB",
    "WEIGHT_DECAY_SETS",
    "CellConfig",
    "CellResources",
    "DataConfig",
    "DiagnosticsConfig",
    "FinetuneConfig",
    "FinetuneTarget",
    "GridCell",
    "GridConfig",
    "GridExclude",
    "LocalMIMConfig",
    "MAEConfig",
    "PretrainConfig",
    "ResourcesConfig",
    "StudyConfig",
    "TrackingConfig",
]


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
