"""One cell of a scaling study: pre-train with a validation-loss curve, then fine-tune.

``run_trial`` runs in any process — a Ray Tune trial, a Ray Train worker, or a
plain ``mimscale trial cell.toml`` — and never imports ray. Everything it writes
goes through the study's store under ``cells/<cell_id>/``: ``cell.toml`` first,
checkpoints while training (resume is exact: model, optimizer, RNG states,
sampler position, curves so far), and at the end ``curves.parquet`` then
``row.parquet`` (the row marks completion).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from scaling.cell.context import CellStore, Reporter, TrialContext, pick_device
from scaling.cell.finetune import run_finetune
from scaling.cell.pretrain import run_pretrain
from scaling.config.load import dump_toml
from scaling.config.parse import to_dict
from scaling.config.schema import CellConfig

log = logging.getLogger(__name__)


def run_trial(
    cell: CellConfig,
    store: CellStore,
    cell_id: str,
    *,
    report: Reporter | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Run (or resume) one cell and write its results; returns the cell's row.

    ``device``: the one a launcher assigned (Ray Train maps each DDP worker's GPU
    inside CUDA_VISIBLE_DEVICES); :func:`pick_device` decides, MIMSCALE_DEVICE first.
    """
    ctx = TrialContext(
        cell=cell,
        store=store,
        cell_id=cell_id,
        device=pick_device(device),
        report=report,
        rank=rank,
        world_size=world_size,
    )
    if ctx.is_main:
        store.write_bytes(ctx.rel("cell.toml"), dump_toml(to_dict(cell)).encode())
    log.info("cell %s: %s on %s for %d iterations", cell_id, cell.model, cell.data, cell.iterations)
    pre = run_pretrain(ctx)
    ft = (
        run_finetune(ctx, pre.state["encoder"], val_loss=pre.result["val_loss"])
        if cell.finetune.enabled
        else None
    )
    row = _row(ctx, pre.result, ft.result if ft else None)
    if ctx.is_main:
        store.write_cell_result(row, pre.points + (ft.points if ft else []))
        ctx.progress(
            phase="done",
            step=cell.iterations,
            iterations=cell.iterations,
            train_loss=row["train_loss"],
            val_loss=row["val_loss"],
            finetune_top1=row["finetune_top1"],
        )
    log.info(
        "cell %s done: val_loss %.4f top1 %s in %.0f s",
        cell_id,
        row["val_loss"],
        "-" if ft is None else f"{row['finetune_top1']:.2f}",
        row["wall_s"],
    )
    return row


def _row(ctx: TrialContext, pre: dict[str, Any], ft: dict[str, Any] | None) -> dict[str, Any]:
    """The cell's row of ``cells.parquet``."""
    cell = ctx.cell
    wall_s = pre["wall_s"] + (ft["wall_s"] if ft else 0.0)
    gpus = cell.resources.gpus * cell.resources.workers if ctx.device.type == "cuda" else 0.0
    return {
        "cell_id": ctx.cell_id,
        "model": cell.model,
        "params_m": pre["params_m"],
        "data": cell.data,
        "n_train_images": pre["n_train_images"],
        "iterations": cell.iterations,
        "batch_size": cell.pretrain.batch_size,
        "epochs_seen": cell.epochs_seen(pre["n_train_images"]),
        "seed": cell.seed,
        "mask_ratio": cell.pretrain.mask_ratio,
        "status": "complete",
        "train_loss": pre["train_loss"],
        "val_loss": pre["val_loss"],
        "finetune_top1": ft["top1"] if ft else None,
        "finetune_top5": ft["top5"] if ft else None,
        "pretrain_flops": pre["flops"],
        "gpu_hours": wall_s * gpus / 3600.0,
        "wall_s": wall_s,
        "bad_images": pre["bad_images"] + (ft["bad_images"] if ft else 0),
        "error": None,
    }
