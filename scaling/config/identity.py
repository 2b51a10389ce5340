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

# Part of every cell's id: bump it when a cell's results change for the same config
# (2: masks from SHAKE-128 block scores, so validation losses moved).
CELL_FORMAT_VERSION = 2

_NOT_IDENTITY = {
    "data_config": ("manifest_dir", "root", "demo", "num_workers"),
    "pretrain": ("val_interval", "checkpoint_interval", "log_interval", "compile"),
}
"""Fields that change where or how fast a cell runs, never its results."""


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cell_identity(cell: CellConfig, digests: dict[str, str]) -> dict[str, Any]:
    """What defines the cell's results: config and manifest digests, not paths or resources."""
    d = to_dict(cell)
    d.pop("resources")
    for section, keys in _NOT_IDENTITY.items():
        for key in keys:
            d[section].pop(key)
    d["digests"] = dict(sorted(digests.items()))
    d["format"] = CELL_FORMAT_VERSION
    return d


def cell_id(cell: CellConfig, digests: dict[str, str]) -> str:
    """The cell's id: 16 hex digits of its identity."""
    return _hash(cell_identity(cell, digests))


def config_key(cell: CellConfig) -> str:
    """The cell's id without its manifest digests: the same cell across manifest rebuilds."""
    identity = cell_identity(cell, {})
    identity.pop("digests")
    return _hash(identity)


def study_hash(study: StudyConfig) -> str:
    """A stable digest of what the study computes (not where it was loaded from)."""
    d = to_dict(study)
    d.pop("source")
    return _hash(d)


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
