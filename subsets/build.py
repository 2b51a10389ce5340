"""Build manifests: read the sources, select every subset, check the output, then write.

Everything that can fail on bad input (names, fractions, sources, class lists, an
output directory holding manifests of another source or seed) fails before the first
file is written; each file is then written through a temp file and a rename. A
manifest whose content digest is already on disk is left untouched ("unchanged").
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from subsets.arrow import from_numpy
from subsets.errors import SubsetError
from subsets.listing import read_listing
from subsets.manifest import (
    FORMAT_VERSION,
    ManifestInfo,
    content_digest,
    manifest_table,
    read_manifest_info,
    write_manifest,
)
from subsets.outdir import check_out_dir, check_targets
from subsets.registry import (
    SourceKind,
    SubsetSpec,
    check_prefix,
    default_subsets,
    fraction_name,
    load_class_list,
    resolve_subset,
    source_kind,
)
from subsets.scan import DEFAULT_WORKERS, scan_tree
from subsets.select import (
    FractionLike,
    check_fraction,
    holdout_counts,
    select_fraction,
    select_holdout,
)
from subsets.source import PreparedSource, prepare_source
from subsets.val import scan_val

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """What to read and which manifests to write."""

    out_dir: Path
    """Directory the manifests are written to (``<out_dir>/<name>.parquet``)."""
    source_kind: str = "in1k"
    """Registered source kind (subsets.registry.SOURCE_KINDS)."""
    train: Path | None = None
    """Train tree ROOT/<wnid>/<image> to scan."""
    listing: Path | None = None
    """Listing file of the train images (instead of ``train``)."""
    val: Path | None = None
    """Val folder: class folders, or flat images + LOC_val_solution.csv."""
    val_csv: Path | None = None
    """The val CSV, when not beside or inside ``val``."""
    val_listing: Path | None = None
    """Listing file of the val images (instead of ``val``)."""
    data_root: Path | None = None
    """Folder the manifest paths are relative to; default: the common parent of the
    scanned folders. Listing paths are taken as written (relative to it)."""
    subsets: tuple[str, ...] = ()
    """Subset names; default: the source kind's defaults (unless ``fractions``)."""
    fractions: tuple[FractionLike, ...] = ()
    """Extra fractions of train, written as ``<prefix>-<N>pct`` (N exact: give decimal
    strings or Fractions for more digits than a float prints)."""
    name_prefix: str | None = None
    """Prefix of generated names; default: the source kind's name."""
    seed: int = 0
    """Selection seed."""
    holdout_per_class: int | None = None
    """Held-out val images per class for kinds that hold out (default: the kind's)."""
    force: bool = False
    """Overwrite manifests of another source or seed in ``out_dir``."""
    workers: int = DEFAULT_WORKERS
    """Threads for scanning."""

    def __post_init__(self) -> None:
        for name in ("out_dir", "train", "listing", "val", "val_csv", "val_listing", "data_root"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if isinstance(self.subsets, str):
            object.__setattr__(self, "subsets", (self.subsets,))
        if self.workers < 1:
            raise SubsetError(f"--workers: must be >= 1, got {self.workers}")


@dataclass(frozen=True, kw_only=True)
class ManifestResult:
    """One manifest of a build, with the figures the CLI prints."""

    path: Path
    info: ManifestInfo
    per_class_min: int
    per_class_median: float
    per_class_max: int
    status: str
    """'written' or 'unchanged' (same content digest already on disk)."""


@dataclass(frozen=True, kw_only=True)
class _Plan:
    spec: SubsetSpec
    source: PreparedSource
    rows: np.ndarray  # bool mask over source rows
    labels: np.ndarray  # labels of the kept rows, into ``classes``
    classes: tuple[str, ...]


def _subset_names(config: BuildConfig, kind: SourceKind, prefix: str) -> list[str]:
    extra = [fraction_name(prefix, check_fraction(f, "--fraction")) for f in config.fractions]
    names = list(config.subsets) + extra
    if not names:
        has_val = config.val is not None or config.val_listing is not None
        names = default_subsets(kind, prefix, with_val=has_val)
    return list(dict.fromkeys(names))


def _data_root(config: BuildConfig) -> Path | None:
    if config.data_root is not None:
        return config.data_root.absolute()
    folders = [p.absolute().parent for p in (config.train, config.val) if p is not None]
    return Path(os.path.commonpath(folders)) if folders else None


def _prefix(folder: Path, root: Path | None, flag: str) -> str:
    """The path of ``folder`` under the data root, as the prefix of its images' paths."""
    rel = os.path.relpath(folder.absolute(), root)
    if rel == ".":
        return ""
    if rel.startswith(".."):
        raise SubsetError(f"{flag} {folder} is not inside the data root {root} (see --root)")
    return rel.replace(os.sep, "/") + "/"


def _read_sources(
    config: BuildConfig, kind: SourceKind, specs: list[SubsetSpec], root: Path | None
) -> tuple[PreparedSource, PreparedSource | None]:
    """The prepared train source and, when a val subset needs one, the val source."""
    if (config.train is None) == (config.listing is None):
        raise SubsetError("pass the train images as --train DIR or --listing FILE (one of them)")
    if config.val is not None and config.val_listing is not None:
        raise SubsetError("pass the val images as --val DIR or --val-listing FILE, not both")
    has_val = config.val is not None or config.val_listing is not None
    if kind.holdout_per_class and has_val:
        raise SubsetError(f"{kind.name} holds its val set out of train; drop --val/--val-listing")
    val_specs = [s.name for s in specs if s.split == "val"]
    if val_specs and not kind.holdout_per_class and not has_val:
        raise SubsetError(
            f"{', '.join(val_specs)} need{'s' if len(val_specs) == 1 else ''} a val split: "
            "pass --val DIR or --val-listing FILE"
        )
    if config.train is not None:
        prefix = _prefix(config.train, root, "--train")
        listing = scan_tree(config.train, prefix, config.workers, what="train")
    else:
        listing = read_listing(config.listing)
    train = prepare_source(listing, kind=kind.name, input="train")
    val = None
    if val_specs and not kind.holdout_per_class:
        if config.val is not None:
            prefix = _prefix(config.val, root, "--val")
            listing = scan_val(config.val, prefix, config.val_csv, config.workers)
        else:
            listing = read_listing(config.val_listing)
        val = prepare_source(listing, kind=kind.name, input="val", classes=train.classes)
    return train, val


def _plan(
    spec: SubsetSpec,
    train: PreparedSource,
    val: PreparedSource | None,
    seed: int,
    held: np.ndarray,
) -> _Plan:
    """Which rows of which source ``spec`` keeps, and their labels."""
    source = val if (spec.split == "val" and val is not None) else train
    if source is val:
        rows = np.ones(len(source.labels), dtype=bool)
    else:
        positions = train.positions(seed)
        if spec.split == "val":
            rows = select_holdout(positions, train.labels, train.counts, held)
        else:
            pool = train.counts - held
            rows = select_fraction(positions, train.labels, pool, spec.fraction)
    classes, labels = source.classes, source.labels[rows]
    if spec.class_subset is not None:
        wanted = load_class_list(spec.class_subset)
        missing = sorted(set(wanted) - set(train.classes))
        if missing:
            raise SubsetError(
                f"{spec.name}: {len(missing)} of the {len(wanted)} classes of "
                f"{spec.class_subset} are not in the train source {train.listing.origin}: "
                + ", ".join(missing[:5])
                + (" …" if len(missing) > 5 else "")
            )
        classes = tuple(sorted(wanted))
        index = {w: i for i, w in enumerate(source.classes)}
        lut = np.full(len(source.classes), -1, dtype=np.int32)
        lut[[index[w] for w in classes]] = np.arange(len(classes), dtype=np.int32)
        rows &= (lut >= 0)[source.labels]
        labels = lut[source.labels[rows]]
    if not rows.any():
        raise SubsetError(f"{spec.name}: selects no images (see --holdout-per-class)")
    return _Plan(spec=spec, source=source, rows=rows, labels=labels, classes=classes)


def _info_fields(plan: _Plan, seed: int, held_per_class: int) -> dict:
    return {
        "name": plan.spec.name,
        "split": plan.spec.split,
        "source_kind": plan.source.kind,
        "source_input": plan.source.input,
        "source_digest": plan.source.digest,
        "seed": seed,
        "fraction": float(plan.spec.fraction),  # a float, as in every earlier manifest
        "holdout_per_class": held_per_class,
        "class_subset": plan.spec.class_subset,
        "classes": plan.classes,
        "num_images": int(plan.rows.sum()),
        "format_version": FORMAT_VERSION,
    }


def _write(plan: _Plan, fields: dict, out_dir: Path) -> ManifestResult:
    keys = plan.source.keys[plan.rows]
    fields = {**fields, "digest": content_digest(fields, plan.labels, keys)}
    info = ManifestInfo(**fields)
    target = out_dir / f"{plan.spec.name}.parquet"
    status = "written"
    try:
        if read_manifest_info(target).digest == info.digest:
            status = "unchanged"
    except SubsetError:
        pass
    if status == "written":
        paths = plan.source.paths.filter(from_numpy(plan.rows))
        table = manifest_table(paths, plan.labels, keys, plan.classes, plan.spec.split)
        write_manifest(table, info, target)
        logger.info("wrote %s (%d images)", target, info.num_images)
    counts = np.bincount(plan.labels, minlength=len(plan.classes))
    return ManifestResult(
        path=target,
        info=info,
        per_class_min=int(counts.min()),
        per_class_median=float(np.median(counts)),
        per_class_max=int(counts.max()),
        status=status,
    )


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    """What a build read and wrote."""

    manifests: list[ManifestResult]
    sources: list[PreparedSource]
    data_root: Path | None


def _check_out_outside_trees(config: BuildConfig) -> None:
    """Refuse an ``--out`` inside an image tree the build scans: its manifests would sit
    among the images (a new class folder, or files in one) for every later scan."""
    out = config.out_dir.resolve()
    for flag, tree in (("--train", config.train), ("--val", config.val)):
        if tree is not None and out.is_relative_to(tree.resolve()):
            raise SubsetError(
                f"--out {config.out_dir}: inside the image tree {flag} {tree}; "
                "write the manifests outside it (e.g. beside it)"
            )


def build_subsets(config: BuildConfig) -> BuildResult:
    """Read the sources of ``config`` and write its manifests (see the module docstring)."""
    kind = source_kind(config.source_kind)
    prefix = config.name_prefix if config.name_prefix is not None else kind.name
    check_prefix(prefix, kind)
    specs = [resolve_subset(n, kind, prefix) for n in _subset_names(config, kind, prefix)]
    check_targets(config.out_dir, [s.name for s in specs])
    _check_out_outside_trees(config)
    held_per_class = (
        config.holdout_per_class if config.holdout_per_class is not None else kind.holdout_per_class
    )
    if held_per_class and not kind.holdout_per_class:
        raise SubsetError(f"--holdout-per-class: the {kind.name} source has a val split of its own")
    train, val = _read_sources(config, kind, specs, _data_root(config))
    held = holdout_counts(train.counts, held_per_class)
    plans = [_plan(spec, train, val, config.seed, held) for spec in specs]
    fields = [_info_fields(p, config.seed, held_per_class) for p in plans]
    check_out_dir(config.out_dir, fields, {s.name for s in specs}, config.force)
    results = [_write(p, f, config.out_dir) for p, f in zip(plans, fields, strict=True)]
    sources = [s for s in (train, val) if s is not None]
    return BuildResult(manifests=results, sources=sources, data_root=_data_root(config))
