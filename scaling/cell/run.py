"""One stage of a study — pre-training, fine-tuning, diagnostics — or a whole cell, anywhere.

``run_stage`` runs in a Ray Tune trial, a Ray Train worker, or a plain process, and
never imports ray. Everything it writes goes through the study's store under
``stages/<kind>/<id>/``: ``stage.toml`` first (the resolved cell), checkpoints while
training (resume is exact: model, optimizer, RNG states, sampler position, the open
log window, curves so far), and at the end ``curves.parquet`` then ``result.parquet``
(the result marks completion). A pre-training trunk also writes its branches'
checkpoints at their fork steps; a fine-tuning stage reads its encoder from its
pre-training stage's result checkpoint, as does a diagnostics stage
(:mod:`scaling.cell.diagnose`). ``run_trial`` runs a cell's stages (``mimscale trial``).

Each stage's log goes to ``log.txt`` in its directory (:mod:`scaling.cell.stagelog`);
rank 0 reports its curves and final metrics to the study's trackers
(:mod:`scaling.cell.tracking`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scaling.cell.context import (
    CellError,
    CellStore,
    Reporter,
    TrialContext,
    load_checkpoint,
    pick_device,
)
from scaling.cell.finetune import run_finetune
from scaling.cell.pretrain import run_pretrain
from scaling.cell.stagelog import StageLog
from scaling.cell.tracking import StageTracker, check_tracking
from scaling.config.load import dump_toml
from scaling.config.parse import to_dict
from scaling.config.schema import CellConfig

log = logging.getLogger(__name__)


def stage_dir(kind: str, stage_id: str) -> str:
    return f"stages/{kind}/{stage_id}"


def run_stage(
    kind: str,
    stage_id: str,
    cell: CellConfig,
    store: CellStore,
    *,
    pretrain_id: str | None = None,
    forks: Sequence[Sequence[Any]] = (),
    prefix_step: int = 0,
    report: Reporter | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Run (or resume) one stage and write its result; returns the stage's row.

    ``forks``: a trunk's ``(fork step, branch id)`` pairs; ``prefix_step``: where this
    pre-training keeps ``prefix.pt``; ``pretrain_id``: a fine-tuning stage's encoder.
    ``device``: the one a launcher assigned; :func:`pick_device` decides.
    """
    check_tracking(cell.tracking)  # a missing tracker library: before any work
    where = stage_dir(kind, stage_id)
    with StageLog(store, where, rank=rank, upload_s=cell.tracking.log_upload_s):
        tracker = _tracker(kind, stage_id, cell, store) if rank == 0 else None
        ctx = TrialContext(
            cell=cell,
            store=store,
            stage_id=stage_id,
            stage_dir=where,
            device=pick_device(device),
            report=_chain(tracker, report),
            rank=rank,
            world_size=world_size,
        )
        ok = False
        try:
            row = _run(ctx, kind, forks, prefix_step, pretrain_id)
            if tracker is not None:
                tracker.final(row)
            ok = True
        finally:
            if tracker is not None:
                tracker.close(ok)
    return row


def _run(
    ctx: TrialContext,
    kind: str,
    forks: Sequence[Sequence[Any]],
    prefix_step: int,
    pretrain_id: str | None,
) -> dict[str, Any]:
    store = ctx.store
    if ctx.is_main:
        store.write_bytes(ctx.rel("stage.toml"), dump_toml(to_dict(ctx.cell)).encode())
    if kind == "pretrain":
        row, points = _pretrain(ctx, forks, prefix_step)
    elif kind == "diagnostics":
        row, points = _diagnostics(ctx, pretrain_id)
    else:
        row, points = _finetune(ctx, pretrain_id)
    if ctx.is_main:
        store.write_stage_result(kind, row, points)
        ctx.progress(phase="done", step=row.get("iterations"), **_progress_of(row))
    log.info("%s stage %s done in %.0f s", kind, ctx.stage_id, row["wall_s"])
    return row


def _tracker(kind: str, stage_id: str, cell: CellConfig, store: CellStore) -> StageTracker | None:
    """The stage's trackers (rank 0), writing under ``tracking/`` of the store."""
    if not cell.tracking.enabled:
        return None
    local = getattr(store, "local_path", lambda rel: None)("tracking")

    def upload(root: Path) -> None:  # an object-store output: the files, once, at the end
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            store.write_bytes(f"tracking/{path.relative_to(root).as_posix()}", path.read_bytes())

    return StageTracker(cell.tracking, kind, stage_id, cell, local_root=local, upload=upload)


def _chain(tracker: StageTracker | None, report: Reporter | None) -> Reporter | None:
    """One reporter that hands progress to the tracker, then to the caller's."""
    if tracker is None or report is None:
        return tracker or report

    def both(fields: dict[str, Any]) -> None:
        tracker(fields)
        report(fields)

    return both


def _progress_of(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("train_loss", "val_loss", "finetune_top1")
    return {k: row[k] for k in keys if k in row}


def _pretrain(
    ctx: TrialContext, forks: Sequence[Sequence[Any]], prefix_step: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cell = ctx.cell
    log.info("pre-training %s: %s on %s, %d steps", ctx.stage_id, cell.model, cell.data,
             cell.iterations)  # fmt: skip
    seeds: dict[int, list[str]] = {}
    for step, branch in forks:
        branch_dir = stage_dir("pretrain", branch)
        seeds.setdefault(int(step), []).extend(
            [f"{branch_dir}/checkpoint.pt", f"{branch_dir}/prefix.pt"]
        )
    if prefix_step:
        seeds.setdefault(prefix_step, []).append(ctx.rel("prefix.pt"))
    out = run_pretrain(ctx, seeds)
    r = out.result
    gpus = _gpus(ctx)
    row = {
        "stage_id": ctx.stage_id,
        "model": cell.model,
        "params_m": r["params_m"],
        "data": cell.data,
        "n_train_images": r["n_train_images"],
        "iterations": cell.iterations,
        "batch_size": cell.pretrain.batch_size,
        "epochs_seen": cell.epochs_seen(r["n_train_images"]),
        "seed": cell.seed,
        "mask_ratio": cell.mask_ratio,
        "method": cell.method,
        "status": "complete",
        "train_loss": r["train_loss"],
        "val_loss": r["val_loss"],
        "pretrain_flops": r["flops"],
        "gpu_hours": r["wall_s"] * gpus / 3600.0,
        "wall_s": r["wall_s"],
        "bad_images": r["bad_images"],
        "bad_val_images": r.get("bad_val_images", 0),
        "error": None,
    }
    return row, out.points


def _finetune(
    ctx: TrialContext, pretrain_id: str | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not pretrain_id:
        raise CellError(f"fine-tuning stage {ctx.stage_id}: no pre-training stage given")
    encoder, val_loss = _encoder_of(ctx.store, pretrain_id)
    log.info("fine-tuning %s from pre-training %s", ctx.stage_id, pretrain_id)
    out = run_finetune(ctx, encoder, val_loss=val_loss)
    r = out.result
    data = ctx.cell.data_config
    row = {
        "stage_id": ctx.stage_id,
        "pretrain_id": pretrain_id,
        "target": ctx.cell.target or data.finetune_train,
        "status": "complete",
        "finetune_top1": r["top1"],
        "finetune_top5": r["top5"],
        "gpu_hours": r["wall_s"] * _gpus(ctx) / 3600.0,
        "wall_s": r["wall_s"],
        "bad_images": r["bad_images"],
        "error": None,
    }
    return row, out.points


def _diagnostics(
    ctx: TrialContext, pretrain_id: str | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The diagnostics stage: statistics of a finished pre-training stage's encoder."""
    from scaling.cell.diagnose import run_diagnostics

    if not pretrain_id:
        raise CellError(f"diagnostics stage {ctx.stage_id}: no pre-training stage given")
    encoder, _ = _encoder_of(ctx.store, pretrain_id)
    return run_diagnostics(ctx, pretrain_id, encoder)


def _encoder_of(store: CellStore, pretrain_id: str) -> tuple[dict[str, torch.Tensor], float]:
    """The pre-trained encoder and final val loss from a finished pre-training stage."""
    rel = f"{stage_dir('pretrain', pretrain_id)}/checkpoint.pt"
    state = load_checkpoint(store, rel)
    if state is None or "result" not in state:
        raise CellError(f"pre-training stage {pretrain_id} has not finished ({rel})")
    encoder = (state.get("state") or {}).get("encoder") or state.get("encoder")
    return encoder, float(state["result"]["val_loss"])


def _gpus(ctx: TrialContext) -> float:
    r = ctx.cell.resources
    return r.gpus * r.workers if ctx.device.type == "cuda" else 0.0


def run_trial(
    cell: CellConfig, store: CellStore, *, device: torch.device | None = None
) -> dict[str, Any]:
    """Both stages of one cell in this process (no sharing); returns its joined row."""
    from scaling.config.identity import finetune_id, manifest_digests, pretrain_id

    digests = manifest_digests(cell)
    pid = pretrain_id(cell, digests)
    pre = run_stage("pretrain", pid, cell, store, device=device)
    row = {**pre, "pretrain_id": pid, "finetune_id": None, "cell_id": pid}
    if cell.finetune.enabled:
        fid = finetune_id(cell, digests)
        ft = run_stage("finetune", fid, cell, store, pretrain_id=pid, device=device)
        row |= {k: ft[k] for k in ("finetune_top1", "finetune_top5")}
        row |= {"finetune_id": fid, "cell_id": fid, "wall_s": pre["wall_s"] + ft["wall_s"]}
        row["gpu_hours"] = pre["gpu_hours"] + ft["gpu_hours"]
        row["bad_images"] = pre["bad_images"] + ft["bad_images"]
    if cell.diagnostics.enabled:
        from scaling.config.identity import diagnostics_identity, identity_hash

        did = identity_hash(diagnostics_identity(cell, pid, digests))
        run_stage("diagnostics", did, cell, store, pretrain_id=pid, device=device)
        row["diagnostics_id"] = did
    return row
