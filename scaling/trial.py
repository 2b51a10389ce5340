"""One cell of a scaling study: pre-train with a validation-loss curve, then fine-tune.

``run_trial`` runs in any process — a Ray Tune trial, a Ray Train worker, or a
plain ``mimscale trial cell.toml`` — and never imports ray. Everything it writes
goes through the study's :class:`~scaling.store.ResultStore` under
``cells/<cell_id>/``: ``cell.toml`` first, checkpoints while training (resume is
exact: model, optimizer, RNG states, sampler position, curves so far), and at
the end ``curves.parquet`` then ``row.parquet`` (the row marks completion).

Fault injection for the reliability tests: ``MIMSCALE_FAIL_AT="[finetune@]<step>:<marker>"``
makes pre-training (or fine-tuning) raise once at that step (the marker file
records that it did).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scaling.checkpoint import load_checkpoint, save_checkpoint
from scaling.config import CellConfig, dump_toml, to_dict
from scaling.finetune import run_finetune
from scaling.pretrain import run_pretrain
from scaling.store import ResultStore

log = logging.getLogger(__name__)

Reporter = Callable[[dict[str, Any]], None]


class TrialError(RuntimeError):
    """A cell that cannot go on (non-finite loss, too many bad images, bad manifests)."""

    exit_code = 2


@dataclass
class TrialContext:
    """What both phases share: where to write, on which device, which rank."""

    cell: CellConfig
    store: ResultStore
    cell_id: str
    device: torch.device
    report: Reporter | None = None
    rank: int = 0
    world_size: int = 1
    points: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rel(self, name: str) -> str:
        return f"cells/{self.cell_id}/{name}"

    def log_point(
        self, phase: str, step: int, split: str, metric: str, value: float, lr: float
    ) -> None:
        self.points.append(
            {
                "cell_id": self.cell_id,
                "phase": phase,
                "step": int(step),
                "split": split,
                "metric": metric,
                "value": float(value),
                "lr": float(lr),
            }
        )

    def progress(self, **fields: Any) -> None:
        """Latest state for ``mimscale status`` and the driver's progress table."""
        if not self.is_main:
            return
        self.store.write_json(self.rel("progress.json"), fields)
        if self.report is not None:
            self.report(dict(fields))

    def save(self, name: str, state: dict[str, Any]) -> None:
        if self.is_main:
            save_checkpoint(self.store, self.rel(name), state)

    def load(self, name: str) -> dict[str, Any] | None:
        return load_checkpoint(self.store, self.rel(name))


def pick_device(assigned: torch.device | None = None) -> torch.device:
    """The device a trial trains on: ``MIMSCALE_DEVICE`` if set (``cpu``, ``cuda``,
    ``cuda:1``; the driver forwards it to every trial), else ``assigned`` (a DDP
    worker's GPU as its launcher mapped it), else this rank's GPU, else the CPU."""
    forced = os.environ.get("MIMSCALE_DEVICE")
    if forced:
        try:
            device = torch.device(forced)
        except RuntimeError as err:
            raise TrialError(f"MIMSCALE_DEVICE: {forced!r} is not a torch device ({err})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise TrialError(f"MIMSCALE_DEVICE: {forced!r}, but this machine has no CUDA device")
        return device
    if assigned is not None:
        return assigned
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def maybe_inject_fault(phase: str, step: int) -> None:
    """Raise once at the configured step (reliability tests only).

    ``MIMSCALE_FAIL_AT`` is ``[phase@]step:marker``; the phase is ``pretrain``
    (the default) or ``finetune``.
    """
    spec = os.environ.get("MIMSCALE_FAIL_AT")
    if not spec:
        return
    where, _, marker = spec.partition(":")
    at_phase, _, at = where.rpartition("@")
    if (at_phase or "pretrain") == phase and int(at) == step and marker:
        if Path(marker).exists():
            return
        Path(marker).write_text(f"failed at {phase} step {step}\n")
        name = {"pretrain": "pre-training", "finetune": "fine-tuning"}[phase]
        raise RuntimeError(f"injected fault at {name} step {step} (MIMSCALE_FAIL_AT)")


def run_trial(
    cell: CellConfig,
    store: ResultStore,
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
        run_finetune(ctx, pre.encoder_state, val_loss=pre.val_loss)
        if cell.finetune.enabled
        else None
    )
    wall_s = pre.wall_s + (ft.wall_s if ft else 0.0)
    gpus = cell.resources.gpus * cell.resources.workers if ctx.device.type == "cuda" else 0.0
    row = {
        "cell_id": cell_id,
        "model": cell.model,
        "params_m": pre.params_m,
        "data": cell.data,
        "n_train_images": pre.n_train_images,
        "iterations": cell.iterations,
        "batch_size": cell.pretrain.batch_size,
        "epochs_seen": cell.epochs_seen(pre.n_train_images),
        "seed": cell.seed,
        "mask_ratio": cell.pretrain.mask_ratio,
        "status": "complete",
        "train_loss": pre.train_loss,
        "val_loss": pre.val_loss,
        "finetune_top1": ft.top1 if ft else None,
        "finetune_top5": ft.top5 if ft else None,
        "pretrain_flops": pre.flops,
        "gpu_hours": wall_s * gpus / 3600.0,
        "wall_s": wall_s,
        "bad_images": pre.bad_images + (ft.bad_images if ft else 0),
        "error": None,
    }
    if ctx.is_main:
        store.write_cell_result(row, ctx.points)
        ctx.progress(
            phase="done",
            step=cell.iterations,
            iterations=cell.iterations,
            train_loss=pre.train_loss,
            val_loss=pre.val_loss,
            finetune_top1=row["finetune_top1"],
        )
    log.info(
        "cell %s done: val_loss %.4f top1 %s in %.0f s",
        cell_id,
        pre.val_loss,
        "-" if ft is None else f"{ft.top1:.2f}",
        wall_s,
    )
    return row
