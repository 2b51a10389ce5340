"""What a cell *is*: its id, its manifests' digests, and the subsets a study reads.

One place for identity: a cell's id is a stable hash of its resolved config
(without paths, resources or logging intervals) plus the digests of the manifests
it reads and :data:`CELL_FORMAT_VERSION`; ``config_key`` is the same without the
digests (the same cell across manifest rebuilds, to detect a changed manifest);
``study_hash`` names what a whole study computes. Subset sizes come from a
manifest's Parquet footer, or the published size of a standard subset while its
manifest is not built. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from scaling.config.parse import ConfigError, to_dict
from scaling.config.schema import CellConfig, DataConfig, StudyConfig

STAGE_FORMAT_VERSION = 3
"""Part of every stage's id: bump it when a stage's results change for the same config.
(3: stages — pre-training and fine-tuning have ids of their own; 2 was the last cell
format, masks from SHAKE-128 block scores.)"""

_NOT_IDENTITY = (
    "val_interval",
    "checkpoint_interval",
    "log_interval",
    "compile",
    "activation_checkpointing",
    "models",
    "targets",  # the target's own recipe is resolved into the cell's; the list is not
)
"""Recipe fields that change how a stage is logged or how fast it runs, never its results."""
NOT_IDENTITY_SECTIONS = ("source", "tracking")
"""Study fields that say where it came from or where it reports, never what it computes
(stage identities list what they use field by field, so these never reach them)."""
_OMITTED_AT = {"decode": "fast", "weight_decay_set": "corrected"}
"""Fields added after stage format 3, left out of an identity at these values, so the ids of
stages that do not use them stay the same."""
_FINETUNE_USES = ("amp", "channels_last")
"""Pre-training settings that fine-tuning follows (precision, memory format)."""


def identity_hash(obj: Any) -> str:
    """16 hex digits of a stable JSON encoding of ``obj``."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _recipe(recipe: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    d = to_dict(recipe)
    for key in (*_NOT_IDENTITY, *drop):
        d.pop(key, None)
    for key, neutral in _OMITTED_AT.items():
        if d.get(key) == neutral:
            d.pop(key)
    return d


def _reading(cell: CellConfig) -> dict[str, Any]:
    """How images are read when that changes them or their order: packed data (its shard-
    aware epoch order; not where the pack lives). Empty for one file per image."""
    data = cell.data_config
    return {"packed": True, "shard_window": data.shard_window} if data.packed else {}


_SIMMIM_ONLY = ("mask_ratio", "mask_patch_size", "norm_target", "norm_target_window")
"""``[pretrain]`` fields that only SimMIM reads (another method's are in its own section)."""


def pretrain_identity(cell: CellConfig, digests: dict[str, str]) -> dict[str, Any]:
    """What determines a pre-trained encoder and its validation curve.

    SimMIM's identity has no method key (the ids of every earlier study stay); another
    method adds its name and its resolved recipe, and drops SimMIM's mask fields.
    """
    names = (cell.data, cell.data_config.val)
    method = {}
    if cell.method != "simmim":
        method = {"method": cell.method, "method_recipe": _recipe(cell.recipe)}
    return (
        method
        | {
            "kind": "pretrain",
            "format": STAGE_FORMAT_VERSION,
            "model": cell.model,
            "data": cell.data,
            "val": cell.data_config.val,
            "iterations": cell.iterations,
            "seed": cell.seed,
            "recipe": _recipe(cell.pretrain, drop=_SIMMIM_ONLY if method else ()),
            "digests": {n: digests.get(n) for n in sorted(set(names))},
        }
        | ({"reading": _reading(cell)} if _reading(cell) else {})
    )


def finetune_identity(cell: CellConfig, pretrain: str, digests: dict[str, str]) -> dict[str, Any]:
    """What determines a fine-tuned classifier: its encoder's stage, recipe and data."""
    data = cell.data_config
    names = (data.finetune_train, data.finetune_val)
    return {
        "kind": "finetune",
        "format": STAGE_FORMAT_VERSION,
        "pretrain": pretrain,
        "train": data.finetune_train,
        "val": data.finetune_val,
        "seed": cell.seed,
        "recipe": _recipe(cell.finetune, drop=("enabled",)),
        "precision": {k: getattr(cell.pretrain, k) for k in _FINETUNE_USES},
        "digests": {n: digests.get(n) for n in sorted(set(names))},
    } | ({"reading": _reading(cell)} if _reading(cell) else {})


DIAGNOSTICS_VERSION = 1
"""Part of a diagnostics stage's id: bump it when the statistics change for the same input."""


def diagnostics_identity(cell: CellConfig, pretrain: str, digests: dict[str, str]) -> dict:
    """What determines an encoder's diagnostics: its pre-training stage and the diagnostic
    set (the ``images`` smallest keys of ``data.val``, in batches of ``batch_size``)."""
    d, val = cell.diagnostics, cell.data_config.val
    return {
        "kind": "diagnostics",
        "format": DIAGNOSTICS_VERSION,
        "pretrain": pretrain,
        "val": val,
        "images": d.images,
        "batch_size": d.batch_size,
        "image_size": cell.pretrain.image_size,
        "digests": {val: digests.get(val)},
    }


def pretrain_id(cell: CellConfig, digests: dict[str, str]) -> str:
    """The pre-training stage's id: 16 hex digits of its identity."""
    return identity_hash(pretrain_identity(cell, digests))


def finetune_id(cell: CellConfig, digests: dict[str, str]) -> str:
    """The fine-tuning stage's id (its pre-training stage's id is part of it)."""
    return identity_hash(finetune_identity(cell, pretrain_id(cell, digests), digests))


def cell_id(cell: CellConfig, digests: dict[str, str]) -> str:
    """A cell's id in ``cells.parquet``: its last stage's (fine-tuning, else pre-training)."""
    return finetune_id(cell, digests) if cell.finetune.enabled else pretrain_id(cell, digests)


def stage_key(identity: dict[str, Any]) -> str:
    """A stage's id without its manifest digests: the same stage across manifest rebuilds."""
    return identity_hash({k: v for k, v in identity.items() if k != "digests"})


def study_hash(study: StudyConfig) -> str:
    """A stable digest of what the study computes (not where it was loaded from)."""
    d = to_dict(study)
    for key in NOT_IDENTITY_SECTIONS:
        d.pop(key, None)
    return identity_hash(d)


def manifest_digests(cell: CellConfig) -> dict[str, str]:
    """``{subset: digest}`` of every manifest the cell reads; a missing one is an error."""
    from subsets.manifest import manifest_digest

    digests, missing = {}, []
    for subset in cell.subsets():
        path = cell.data_config.manifest(subset)
        if not path.exists():
            missing.append(f"{subset} ({path})")
            continue
        digests[subset] = manifest_digest(path)
    if missing:
        raise ConfigError("data.manifest_dir", f"missing manifests: {', '.join(missing)}")
    return digests


KNOWN_IMAGES: dict[str, int] = {
    "in1k-100pct": 1_281_167,
    "in1k-val": 50_000,
    "in100": 126_689,
    "in100-val": 5_000,
    # fall11: 14,197,122 images in 21,841 classes, less 5 held out per class for in22k-val
    "in22k": 14_197_122 - 5 * 21_841,
    "in22k-val": 5 * 21_841,
}
"""Published sizes of the standard subsets, for planning before the manifests exist."""

_PCT = re.compile(r"^(?P<prefix>.+)-(?P<pct>\d+(\.\d+)?)pct$")


@dataclass(frozen=True, kw_only=True)
class SubsetInfo:
    """One subset as the planner sees it."""

    name: str
    images: int | None
    """Image count (None: unknown)."""
    exact: bool
    """True when counted from the manifest; False for an estimate from KNOWN_IMAGES."""
    digest: str | None
    """Manifest digest (None: no manifest on disk)."""


def estimate_images(name: str) -> int | None:
    """The standard size of ``name``; ``<prefix>-<N>pct`` as N% of ``<prefix>-100pct``.

    Fractions are selected per class (round(f·n_c), at least one), so the true count of
    a fraction differs from round(f·n) by at most the number of classes.
    """
    if name in KNOWN_IMAGES:
        return KNOWN_IMAGES[name]
    match = _PCT.match(name)
    full = KNOWN_IMAGES.get(f"{match['prefix']}-100pct") if match else None
    if match is None or full is None:
        return None
    return round(full * float(match["pct"]) / 100)


def subset_info(data: DataConfig, name: str) -> SubsetInfo:
    """Images and digest from the manifest's footer, else an estimate."""
    path = data.manifest(name)
    if path.is_file():
        from subsets.manifest import read_manifest_info

        info = read_manifest_info(path)
        return SubsetInfo(name=name, images=info.num_images, exact=True, digest=info.digest)
    return SubsetInfo(name=name, images=estimate_images(name), exact=False, digest=None)


def study_subsets(study: StudyConfig) -> dict[str, SubsetInfo]:
    """Every subset any cell of the study reads, each looked up once."""
    names: list[str] = []
    for cell in study.cells():
        names += cell.subsets()
    return {n: subset_info(study.data, n) for n in dict.fromkeys(names)}


def cell_digests(cell: CellConfig, subsets: dict[str, SubsetInfo]) -> dict[str, str] | None:
    """The cell's manifest digests (as :func:`manifest_digests`), or None."""
    digests = {n: subsets[n].digest for n in cell.subsets()}
    if any(d is None for d in digests.values()):
        return None
    return {n: d for n, d in digests.items() if d is not None}
