"""Everything ``mimscale run`` checks before it launches a single cell (no Ray here).

Order matters, so that a bad study writes nothing: the study is already valid
when it gets here (:func:`scaling.config.schema.load_study`); then the demo data is
built if the study asks for it, every manifest must exist (and be in the pack the study
reads, if any), the stage graph and its
ids are computed from the config and the manifest digests, results of an older
layout and stages whose manifests changed since they started are refused. Only
then is anything written under ``output_dir``.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.config.identity import (
    KNOWN_IMAGES,
    SubsetInfo,
    cell_digests,
    estimate_images,
    stage_key,
    study_hash,
    study_subsets,
)
from scaling.config.parse import ConfigError, locate, to_dict
from scaling.config.schema import StudyConfig
from scaling.study.stages import KINDS, StageGraph, build_graph
from scaling.study.store import ResultStore

log = logging.getLogger(__name__)

STARTED_MARKERS = ("progress.json", "checkpoint.pt", "finetune.pt", "result.parquet")
"""Files that show a stage directory holds work (not only its record)."""


@dataclass(frozen=True)
class RunSet:
    """The study's stage graph, its stages split into finished and to-do."""

    graph: StageGraph
    done: tuple[str, ...]
    """Stage ids complete in the store."""
    todo: tuple[str, ...]
    """Stage ids to run, pre-training first."""


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
    keys.setdefault(study.data.val, "data.val")
    if study.finetune.enabled:
        for key, target in study.targets():
            train_key = "data.finetune_train" if key.startswith("data") else f"{key}.train"
            val_key = "data.finetune_val" if key.startswith("data") else f"{key}.val"
            keys.setdefault(target.train, train_key)
            keys.setdefault(target.val, val_key)
    return keys


def verify_rows(study: StudyConfig, subsets: dict[str, SubsetInfo]) -> dict[str, SubsetInfo]:
    """Every row of every manifest checked against the digest its footer records (which
    keys the stages): a manifest whose rows changed after it was built is refused, naming
    the file (SubsetError, exit 2), before anything is written."""
    from subsets.manifest import manifest_digest

    for name in subsets:
        manifest_digest(study.data.manifest(name))
    return subsets


def check_manifests(study: StudyConfig) -> dict[str, SubsetInfo]:
    """Every manifest the study reads; a missing one is a located error listing all missing."""
    subsets = study_subsets(study)
    missing = [name for name, info in subsets.items() if info.digest is None]
    if not missing:
        return verify_rows(study, subsets)
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


def study_graph(study: StudyConfig, subsets: dict[str, SubsetInfo]) -> StageGraph:
    """The stage graph of the study; every manifest must exist (:func:`check_manifests`)."""
    pairs = []
    for cell in study.cells():
        digests = cell_digests(cell, subsets)
        if digests is None:
            raise ValueError("study_graph needs every manifest; call check_manifests first")
        pairs.append((cell, digests))
    return build_graph(pairs, share_prefix=study.grid.share_prefix)


def refuse_old_layout(study: StudyConfig, store: ResultStore) -> None:
    """Results of mimscale before stages (one ``cells/<id>/`` directory per cell, format 2)
    have other ids and files: they are refused rather than silently mixed in."""
    if not store.exists("cells") or not store.cell_ids():
        return
    raise located(
        study,
        "output_dir",
        f"{store.uri} holds results of an earlier mimscale layout (one directory per cell "
        "under cells/, cell format 2); stages have other ids and files, so they are not "
        "reused. Write to a new output_dir (--set output_dir=…) or move the old results "
        "away; `mimscale analyze` still reads their cells.parquet",
    )


def digest_conflicts(store: ResultStore, graph: StageGraph) -> list[str]:
    """Stages that started with manifests whose digests have changed since."""
    ours = {stage_key(s.identity): s for s in graph.stages()}
    problems = []
    for kind in KINDS:
        for other_id in store.stage_ids(kind):
            record = store.read_json(f"stages/{kind}/{other_id}/stage.json") or {}
            planned = ours.get(record.get("key"))
            if planned is None or planned.stage_id == other_id:
                continue
            if not any(store.exists(f"stages/{kind}/{other_id}/{m}") for m in STARTED_MARKERS):
                continue  # only its record was written: nothing to protect
            old = record.get("identity", {}).get("digests", {})
            new = planned.identity["digests"]
            changed = [
                f"{name} {str(old.get(name))[:12]} → {str(d)[:12]}"
                for name, d in new.items()
                if old.get(name) != d
            ]
            c = planned.cell
            problems.append(
                f"{kind} stage {other_id} ({c.model}, {c.data}, {c.iterations} iterations) "
                f"started with other manifests: {', '.join(changed) or 'an upstream stage'}"
            )
    return problems


def seed_from_prefixes(store: ResultStore, graph: StageGraph) -> list[tuple[str, str, int]]:
    """Grown studies: a pre-training stage with no checkpoint yet starts from the longest
    prefix a shorter length of its group already trained (``prefix.pt``), when that is
    further than its own fork. Returns (stage, source stage, step) of each seeded stage."""
    seeded = []
    for stage in graph.pretrain.values():
        ckpt = f"{stage.dir}/checkpoint.pt"
        if store.stage_complete("pretrain", stage.stage_id) or store.exists(ckpt):
            continue
        best: tuple[int, str] | None = None
        for other_id in store.stage_ids("pretrain"):
            record = store.read_json(f"stages/pretrain/{other_id}/stage.json") or {}
            if not _same_group(record.get("identity", {}), stage.identity):
                continue
            step = int(record.get("prefix_step") or 0)
            length = int(record["identity"]["iterations"])
            if length >= stage.cell.iterations or step <= max(stage.fork_step, 0):
                continue
            if store.exists(f"stages/pretrain/{other_id}/prefix.pt") and (
                best is None or step > best[0]
            ):
                best = (step, other_id)
        if best is not None:
            data = store.read_bytes(f"stages/pretrain/{best[1]}/prefix.pt")
            if data is not None:
                store.write_bytes(ckpt, data)
                seeded.append((stage.stage_id, best[1], best[0]))
                log.info("stage %s starts at step %d from %s", stage.stage_id, *best)
    return seeded


def _same_group(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two pre-training identities that differ only in their length."""
    drop = ("iterations",)
    return bool(a) and {k: v for k, v in a.items() if k not in drop} == {
        k: v for k, v in b.items() if k not in drop
    }


def check_batch_fits_data(study: StudyConfig, subsets: dict[str, SubsetInfo]) -> None:
    """A subset must hold at least one global batch of the stage that trains on it (the
    sampler would refuse it inside every trial); named by the subset's key and the batch."""
    keys = _subset_keys(study)
    for cell in study.cells():
        needs = [(cell.data, cell.pretrain.batch_size, "pretrain.batch_size")]
        if cell.finetune.enabled:
            needs.append(
                (cell.data_config.finetune_train, cell.finetune.batch_size, "finetune.batch_size")
            )
        for name, batch, batch_key in needs:
            images = subsets[name].images
            if images is not None and images < batch:
                raise located(
                    study,
                    keys.get(name, "data"),
                    f"{name} has {images} images, fewer than one global batch "
                    f"({batch_key} = {batch} for {cell.model}); use a larger subset or a "
                    f"smaller {batch_key}",
                )


def check_pack(study: StudyConfig, subsets: dict[str, SubsetInfo]) -> None:
    """With ``data.packed``: the pack opens and holds every image of every manifest the
    study reads (a stage would fail on it inside Ray, after its retries), and its index
    is intact (its digest); located at ``data.packed``. Reads the pack's index and the
    manifests' keys, not the shards (``mimscale subsets pack-verify`` reads those)."""
    if not study.data.packed:
        return
    from scaling.data.decode import GPU_MODE
    from scaling.data.source import pixels_refuse_gpu
    from subsets.errors import SubsetError
    from subsets.manifest import read_manifest
    from subsets.packlayout import PIXELS
    from subsets.shards import open_pack

    try:
        pack = open_pack(study.data.packed)
        problem = pack.verify_index()
        if problem:
            raise SubsetError(f"pack {study.data.packed}: index.parquet: {problem}")
        for name in subsets:
            table, _ = read_manifest(study.data.manifest(name), columns=["key"])
            pack.rows_of(table.column("key").to_numpy(), name)
        if pack.content == PIXELS and any(c.pretrain.decode == GPU_MODE for c in study.cells()):
            raise SubsetError(pixels_refuse_gpu(study.data.packed))
    except SubsetError as err:
        raise located(study, "data.packed", str(err)) from None


def _complete(store: ResultStore, kind: str, stage_id: str) -> bool:
    """Complete, with its curves (a complete stage whose curves are missing or damaged is
    set aside and runs again, from its final checkpoint)."""
    return store.stage_complete(kind, stage_id) and (
        store.stage_curves(kind, stage_id, complete=True) is not None
    )


def prepare_run(study: StudyConfig, store: ResultStore) -> RunSet:
    """Demo data, manifests, the stage graph, conflicts and the done/to-do split; writes no
    results (prefix seeding of a grown study happens in :func:`write_study_record`)."""
    ensure_demo(study)
    subsets = check_manifests(study)
    check_batch_fits_data(study, subsets)
    check_pack(study, subsets)
    graph = study_graph(study, subsets)
    refuse_old_layout(study, store)
    problems = digest_conflicts(store, graph)
    if problems:
        raise located(
            study,
            "data.manifest_dir",
            "refusing stages whose manifests changed since they started (restore the "
            "manifests, or write to a new output_dir with --set output_dir=…):\n  "
            + "\n  ".join(problems),
        )
    stages = graph.stages()
    done = tuple(s.stage_id for s in stages if _complete(store, s.kind, s.stage_id))
    todo = tuple(s.stage_id for s in stages if s.stage_id not in done)
    return RunSet(graph=graph, done=done, todo=todo)


def write_study_record(store: ResultStore, study: StudyConfig, run: RunSet) -> None:
    """``study.json`` (resolved study, hash, stage and cell ids), each stage's
    ``stage.json``, and the prefix checkpoints of a grown study's new lengths."""
    previous = store.read_json("study.json") or {}
    history = list(previous.get("previous_hashes", []))
    if previous.get("hash") and previous["hash"] != study_hash(study):
        history.append(previous["hash"])
    graph = run.graph
    store.write_json(
        "study.json",
        {
            "hash": study_hash(study),
            "previous_hashes": history,
            "study": to_dict(study),
            "cells": graph.cell_ids(),
            "stages": {k: sorted(getattr(graph, k)) for k in KINDS},
        },
    )
    for stage in graph.stages():
        if stage.stage_id in run.todo:
            store.write_json(f"{stage.dir}/stage.json", stage.record())
    seed_from_prefixes(store, graph)
