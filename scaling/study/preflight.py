"""Everything ``mimscale run`` checks before it launches a single cell (no Ray here).

Order matters, so that a bad study writes nothing: the study is already valid
when it gets here (:func:`scaling.config.schema.load_study`); then the demo data is
built if the study asks for it, every manifest must exist, cell ids are computed
from the config and the manifest digests, and a cell whose manifests changed
since it started is refused. Only then is anything written under ``output_dir``.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

from scaling.config.identity import (
    KNOWN_IMAGES,
    SubsetInfo,
    cell_digests,
    cell_id,
    cell_identity,
    config_key,
    estimate_images,
    study_hash,
    study_subsets,
)
from scaling.config.parse import ConfigError, locate, to_dict
from scaling.config.schema import CellConfig, StudyConfig
from scaling.study.store import ResultStore

log = logging.getLogger(__name__)

STARTED_MARKERS = ("progress.json", "checkpoint.pt", "row.parquet")
"""Files that show a cell directory holds work (not only its config)."""


@dataclass(frozen=True)
class PlannedCell:
    """A cell of the study with its id and the digests of the manifests it reads."""

    cell_id: str
    cell: CellConfig
    digests: dict[str, str]

    def record(self) -> dict[str, object]:
        """``cells/<id>/cell.json``: the identity, and the key that survives manifest rebuilds."""
        return {
            "cell_id": self.cell_id,
            "config_key": config_key(self.cell),
            "digests": dict(sorted(self.digests.items())),
            "identity": cell_identity(self.cell, self.digests),
        }


@dataclass(frozen=True)
class RunSet:
    """The study's cells with their ids, split into finished and to-do."""

    cells: tuple[PlannedCell, ...]
    """In grid order."""
    done: tuple[str, ...]
    todo: tuple[str, ...]

    def by_id(self) -> dict[str, PlannedCell]:
        return {c.cell_id: c for c in self.cells}


def located(study: StudyConfig, key: str, message: str) -> ConfigError:
    """A ConfigError that names the study file and the key's line, like load_study's."""
    where = study.source or None
    if study.source and Path(study.source).is_file():
        line = locate(Path(study.source).read_text(encoding="utf-8"), key)
        where = f"{study.source}:{line}" if line else study.source
    return ConfigError(key, message, source=where)


def ensure_demo(study: StudyConfig) -> bool:
    """Build the embedded demo data set when the study asks for it and a manifest is missing."""
    if not study.data.demo:
        return False
    subsets = study_subsets(study)
    if all(s.digest is not None for s in subsets.values()):
        return False
    from subsets.demo import build_demo

    root, manifests = Path(study.data.root), Path(study.data.manifest_dir)
    if manifests != root / "manifests":
        raise located(
            study,
            "data.manifest_dir",
            f"with data.demo = true it must be <data.root>/manifests ({root / 'manifests'}), "
            f"got {manifests}",
        )
    log.info("building the demo data set into %s", root)
    build_demo(root)
    return True


def _subset_keys(study: StudyConfig) -> dict[str, str]:
    """The dotted key that names each subset first (for located errors)."""
    keys = {name: f"grid.data[{i}]" for i, name in enumerate(study.grid.data)}
    for field in ("val", "finetune_train", "finetune_val"):
        if field.startswith("finetune") and not study.finetune.enabled:
            continue
        keys.setdefault(getattr(study.data, field), f"data.{field}")
    return keys


def check_manifests(study: StudyConfig) -> dict[str, SubsetInfo]:
    """Every manifest the study reads; a missing one is a located error listing all missing."""
    subsets = study_subsets(study)
    missing = [name for name, info in subsets.items() if info.digest is None]
    if not missing:
        return subsets
    present = (
        sorted(p.stem for p in Path(study.data.manifest_dir).glob("*.parquet"))
        if Path(study.data.manifest_dir).is_dir()
        else []
    )
    keys = _subset_keys(study)

    order = list(keys)
    missing.sort(key=lambda n: order.index(n) if n in order else len(order))

    def hint(name: str) -> str:
        if estimate_images(name) is not None:
            return ""  # a standard name, only not built yet
        close = difflib.get_close_matches(name, present + list(KNOWN_IMAGES), n=1)
        return f" (did you mean {close[0]!r}?)" if close and close[0] != name else ""

    where = study.data.manifest_dir
    if len(missing) == 1:
        listed = f"missing manifest {missing[0]} in {where}{hint(missing[0])}"
    else:
        parts = [f"{n} [{keys.get(n, 'data')}]{hint(n)}" for n in missing]
        listed = f"missing manifests in {where}: {', '.join(parts)}"
    build = "" if study.data.demo else "; build them with `mimscale subsets build`"
    raise located(study, keys.get(missing[0], "data.manifest_dir"), listed + build)


def resolve_cells(study: StudyConfig, subsets: dict[str, SubsetInfo]) -> list[PlannedCell]:
    """Every cell with its id; the manifests must exist (:func:`check_manifests`)."""
    out = []
    for cell in study.cells():
        digests = cell_digests(cell, subsets)
        if digests is None:
            raise ValueError("resolve_cells needs every manifest; call check_manifests first")
        out.append(PlannedCell(cell_id=cell_id(cell, digests), cell=cell, digests=digests))
    return out


def digest_conflicts(store: ResultStore, cells: list[PlannedCell]) -> list[str]:
    """Cells that started with manifests whose digests have changed since."""
    ours = {config_key(c.cell): c for c in cells}
    problems = []
    for other_id in store.cell_ids():
        record = store.read_json(f"cells/{other_id}/cell.json")
        planned = ours.get((record or {}).get("config_key"))
        if planned is None or planned.cell_id == other_id:
            continue
        if not any(store.exists(f"cells/{other_id}/{m}") for m in STARTED_MARKERS):
            continue  # only its config was written: nothing to protect
        old = record.get("digests", {})
        changed = [
            f"{name} {str(old.get(name))[:12]} → {digest[:12]}"
            for name, digest in planned.digests.items()
            if old.get(name) != digest
        ]
        c = planned.cell
        problems.append(
            f"cell {other_id} ({c.model}, {c.data}, {c.iterations} iterations) started with "
            f"other manifests: {', '.join(changed)}"
        )
    return problems


def prepare_run(study: StudyConfig, store: ResultStore) -> RunSet:
    """Demo data, manifests, ids, conflicts and the done/to-do split; writes no results."""
    ensure_demo(study)
    cells = resolve_cells(study, check_manifests(study))
    problems = digest_conflicts(store, cells)
    if problems:
        raise located(
            study,
            "data.manifest_dir",
            "refusing cells whose manifests changed since they started (restore the "
            "manifests, or write to a new output_dir with --set output_dir=…):\n  "
            + "\n  ".join(problems),
        )
    done = tuple(c.cell_id for c in cells if store.is_complete(c.cell_id))
    todo = tuple(c.cell_id for c in cells if c.cell_id not in done)
    return RunSet(cells=tuple(cells), done=done, todo=todo)


def write_study_record(store: ResultStore, study: StudyConfig, run: RunSet) -> None:
    """``study.json`` (resolved study, hash, cell ids) and each cell's ``cell.json``."""
    previous = store.read_json("study.json") or {}
    history = list(previous.get("previous_hashes", []))
    if previous.get("hash") and previous["hash"] != study_hash(study):
        history.append(previous["hash"])
    store.write_json(
        "study.json",
        {
            "hash": study_hash(study),
            "previous_hashes": history,
            "study": to_dict(study),
            "cells": [c.cell_id for c in run.cells],
        },
    )
    for c in run.cells:
        if c.cell_id in run.todo:
            store.write_json(f"cells/{c.cell_id}/cell.json", c.record())
