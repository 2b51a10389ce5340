"""The output directory check: never mix manifests of different sources or seeds.

A directory of manifests is one consistent set: fractions of the same source with the
same seed are nested, and the held-out val set is disjoint from train. Writing, say,
``in1k-20pct`` with seed 1 next to ``in1k-10pct`` with seed 0 would silently break
that, so a build refuses (unless ``--force``) when the directory already holds a
manifest of the same source kind built from a different source digest, seed or
hold-out count.

:func:`check_targets` runs before anything is read or written: ``--out`` must be (or
be creatable as) a writable folder, and no target ``<name>.parquet`` may be a folder or
another non-file, ``--force`` or not, so a build never stops after replacing some
manifests.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from subsets.errors import SubsetError
from subsets.manifest import read_manifest_info

logger = logging.getLogger(__name__)


def check_out_dir(
    out_dir: Path, fields: list[dict[str, Any]], targets: set[str], force: bool
) -> None:
    """Refuse ``out_dir`` if it holds manifests of the same source kind built from
    another source (digest), with another seed or another hold-out; ``fields`` are the
    metadata of the manifests about to be written, ``targets`` their names."""
    if not out_dir.is_dir():
        return
    new = {(f["source_kind"], f["source_input"]): f for f in fields}
    for path in sorted(out_dir.glob("*.parquet")):
        try:
            old = read_manifest_info(path)
        except SubsetError:
            if path.stem in targets and not force:
                raise SubsetError(f"{path} exists and is not a manifest; pass --force") from None
            continue
        ours = [f for (kind, _), f in new.items() if kind == old.source_kind]
        if not ours:
            continue
        problems = []
        if ours[0]["seed"] != old.seed:
            problems.append(f"with seed {old.seed}, not {ours[0]['seed']}")
        if ours[0]["holdout_per_class"] != old.holdout_per_class:
            problems.append(
                f"with {old.holdout_per_class} held out per class, "
                f"not {ours[0]['holdout_per_class']}"
            )
        same_input = new.get((old.source_kind, old.source_input))
        if same_input is not None and same_input["source_digest"] != old.source_digest:
            problems.append(
                f"from a different {old.source_input} source (digest "
                f"{old.source_digest[:12]}, now {same_input['source_digest'][:12]})"
            )
        if problems and not force:
            raise SubsetError(
                f"{out_dir} already holds {path.name}, built {' and '.join(problems)}; "
                "pass --force to overwrite, or choose another --out"
            )
        if problems:
            logger.warning("--force: %s was built %s", path, " and ".join(problems))


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_out_folder(out_dir: Path, flag: str = "--out") -> None:
    """Refuse an output folder that is a file, lies under a file, or cannot be written."""
    out_dir = out_dir.absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise SubsetError(f"{flag} {out_dir}: not a folder")
    existing = _nearest_existing(out_dir)
    if not existing.is_dir():
        raise SubsetError(f"{flag} {out_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "folder" if existing == out_dir else f"folder cannot be created: {existing}"
        raise SubsetError(f"{flag} {out_dir}: {what} is not writable")
    try:  # root passes the access check where a write still fails (/proc, /sys, read-only)
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise SubsetError(
            f"{flag} {out_dir}: cannot write in {existing} ({err.strerror})"
        ) from None


def check_targets(out_dir: Path, names: list[str]) -> None:
    """Refuse an ``--out`` that is not a writable folder, or a target that is not a file."""
    check_out_folder(out_dir)
    out_dir = out_dir.absolute()
    for name in names:
        target = out_dir / f"{name}.parquet"
        if target.exists() and not target.is_file():
            raise SubsetError(
                f"--out {out_dir}: {target.name} exists and is not a file; remove it or "
                "choose another --out"
            )
