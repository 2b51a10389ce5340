"""The table of a study's cells — done, running, stopped, failed, pending — read from the store.

``mimscale status`` prints it without running anything; ``mimscale run`` prints
it every few seconds while the grid runs. Everything comes from the cells'
files (``row.parquet``, ``progress.json``), so any machine that sees the store
sees the same table.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from scaling.config.schema import CellConfig
from scaling.study.store import ResultStore

STATES = ("done", "running", "stopped", "failed", "pending")
"""done: row complete; running: in flight now; stopped: has progress but no live run
(it resumes from its checkpoint next time); failed: its last attempt raised; pending:
not started."""

FRESH_S = 120.0
"""Without a scheduler to ask, a cell whose progress is newer than this counts as running."""


@dataclass(frozen=True, kw_only=True)
class CellStatus:
    cell_id: str
    model: str
    data: str
    iterations: int
    seed: int
    mask_ratio: float
    state: str
    phase: str | None = None
    step: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    finetune_top1: float | None = None
    error: str | None = None


def _progress_age_s(store: ResultStore, rel: str) -> float | None:
    import pyarrow.fs as pafs

    info = store.fs.get_file_info(store.path(rel))
    if info.type == pafs.FileType.NotFound or info.mtime_ns is None:
        return None
    return time.time() - info.mtime_ns / 1e9


def cell_status(
    store: ResultStore, cell_id: str, cell: CellConfig, *, running: bool | None = None
) -> CellStatus:
    """One cell's state; ``running`` from the scheduler when known, else from progress age."""
    base: dict[str, Any] = {
        "cell_id": cell_id,
        "model": cell.model,
        "data": cell.data,
        "iterations": cell.iterations,
        "seed": cell.seed,
        "mask_ratio": cell.pretrain.mask_ratio,
    }
    row = store.cell_row(cell_id)
    if row is not None and row.get("status") == "complete":
        return CellStatus(
            **base,
            state="done",
            phase="done",
            step=cell.iterations,
            train_loss=row.get("train_loss"),
            val_loss=row.get("val_loss"),
            finetune_top1=row.get("finetune_top1"),
        )
    progress = store.read_json(f"cells/{cell_id}/progress.json") or {}
    if running is None:
        age = _progress_age_s(store, f"cells/{cell_id}/progress.json")
        running = age is not None and age < FRESH_S and row is None
    if running:
        state = "running"
    elif row is not None and row.get("status") == "failed":
        state = "failed"
    elif progress:
        state = "stopped"
    else:
        state = "pending"
    return CellStatus(
        **base,
        state=state,
        phase=progress.get("phase"),
        step=progress.get("step"),
        train_loss=progress.get("train_loss"),
        val_loss=progress.get("val_loss"),
        finetune_top1=progress.get("finetune_top1"),
        error=row.get("error") if row is not None else None,
    )


def study_status(
    store: ResultStore,
    cells: Sequence[tuple[str, CellConfig]],
    running: Collection[str] | None = None,
) -> list[CellStatus]:
    """Every cell's state; ``running`` lists the cells a live scheduler has in flight."""
    return [
        cell_status(store, cell_id, cell, running=None if running is None else cell_id in running)
        for cell_id, cell in cells
    ]


def summary(rows: Sequence[CellStatus]) -> str:
    counts = Counter(r.state for r in rows)
    parts = [f"{counts[s]} {s}" for s in STATES if counts[s]]
    return f"{len(rows)} cells: {', '.join(parts) or 'none'}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None or value != value else format(value, fmt)  # None or NaN


def format_status(rows: Sequence[CellStatus], *, compact_over: int = 0) -> str:
    """A fixed-width table, one line per cell, and a summary line.

    With ``compact_over`` > 0 and more cells than that, only the cells that are not
    done or pending are listed (a live view of a large grid).
    """
    shown = list(rows)
    if 0 < compact_over < len(rows):
        shown = [r for r in rows if r.state not in ("done", "pending")]
    head = (
        f"{'cell':<16}  {'model':<12} {'data':<14} {'iterations':>10}  {'state':<8} "
        f"{'phase':<9} {'step':>8} {'train_loss':>10} {'val_loss':>9} {'top1':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in shown:
        lines.append(
            f"{r.cell_id:<16}  {r.model:<12} {r.data:<14} {r.iterations:>10}  {r.state:<8} "
            f"{r.phase or '-':<9} {_num(r.step, 'd'):>8} {_num(r.train_loss, '.4f'):>10} "
            f"{_num(r.val_loss, '.4f'):>9} {_num(r.finetune_top1, '.2f'):>6}"
        )
        if r.state == "failed" and r.error:
            lines.append(f"{'':<18}error: {r.error.splitlines()[0][:160]}")
    lines.append(summary(rows))
    return "\n".join(lines)
