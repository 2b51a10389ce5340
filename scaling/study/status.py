"""The state of a study's stages — done, running, waiting, stopped, failed, pending — from
the store.

``mimscale status`` prints it without running anything; ``mimscale run`` prints it every
few seconds while the grid runs. Everything comes from the stages' files
(``result.parquet``, ``progress.json``, ``checkpoint.pt``), so any machine that sees the
store sees the same table. Pre-training stages show their role: ``trunk`` (the longest
length of its group, seeding the others), ``branch`` (a shorter length that starts at its
fork step from the trunk's checkpoint; ``waiting`` until that checkpoint exists) or
``run`` (on its own); fine-tunes and diagnostics (kind ``diagnostics``, role ``diagnose``)
wait for their encoder.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from scaling.study.stages import Stage, StageGraph
from scaling.study.store import ResultStore

STATES = ("done", "running", "waiting", "interrupted", "stopped", "failed", "pending")
"""done: result complete; running: in flight now; waiting: its input (fork checkpoint,
encoder) is not there yet; interrupted: a signal (Ctrl-C, SIGTERM) stopped the run while
it was in flight (it resumes from its checkpoint next time); stopped: has progress but no
live run (the driver died; it resumes too); failed: its last attempt raised; pending: not
started."""

INTERRUPTED = "interrupted"

FRESH_S = 120.0
"""Without a scheduler to ask, a stage whose progress is newer than this counts as running."""


@dataclass(frozen=True, kw_only=True)
class StageStatus:
    stage_id: str
    kind: str
    role: str
    model: str
    data: str
    iterations: int
    seed: int
    state: str
    upstream: str | None = None
    """A branch's trunk; a fine-tune's pre-training stage."""
    fork_step: int = 0
    step: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    finetune_top1: float | None = None
    error: str | None = None
    gpus: float = 0.0
    """GPUs the stage holds (per worker × workers)."""
    total_steps: int | None = None
    """The running phase's last step (a fine-tune's comes from its data)."""
    images_per_s: float | None = None
    """Over the last log interval (progress.json)."""
    data_wait: float | None = None
    """Share of the last log interval the loop waited for its next batch (0–1)."""
    eta_s: float | None = None
    """A running stage's time to its last step, at its measured rate."""
    wall_s: float | None = None
    """Time trained so far (all attempts), or in all once done."""
    gpu_hours: float | None = None
    """A finished stage's GPU-hours (0 on the CPU)."""
    log: str | None = None
    """A failed, interrupted or stopped stage's log in the store (``mimscale logs``)."""


def _progress_age_s(store: ResultStore, rel: str) -> float | None:
    import pyarrow.fs as pafs

    info = store.fs.get_file_info(store.path(rel))
    if info.type == pafs.FileType.NotFound or info.mtime_ns is None:
        return None
    return time.time() - info.mtime_ns / 1e9


def _waiting(store: ResultStore, stage: Stage, graph: StageGraph) -> bool:
    """Its input is missing: a branch without its fork checkpoint (trunk still before the
    fork), a fine-tune or diagnostics whose pre-training is not complete."""
    if stage.kind in ("finetune", "diagnostics"):
        return not store.stage_complete("pretrain", stage.pretrain_id or "")
    if stage.trunk_id:
        trunk_row = store.stage_row("pretrain", stage.trunk_id)
        return trunk_row is None and not store.exists(f"{stage.dir}/checkpoint.pt")
    return False


def stage_status(
    store: ResultStore, stage: Stage, graph: StageGraph, *, running: bool | None = None
) -> StageStatus:
    """One stage's state; ``running`` from the scheduler when known, else from progress age."""
    cell = stage.cell
    base: dict[str, Any] = {
        "stage_id": stage.stage_id,
        "kind": stage.kind,
        "role": stage.role,
        "model": cell.model,
        "data": cell.data,
        "iterations": cell.iterations,
        "seed": cell.seed,
        "upstream": stage.pretrain_id or stage.trunk_id,
        "fork_step": stage.fork_step,
        "gpus": cell.resources.gpus * cell.resources.workers,
    }
    row = store.stage_row(stage.kind, stage.stage_id)
    if row is not None and row.get("status") == "complete":
        return StageStatus(
            **base,
            state="done",
            step=cell.iterations if stage.kind == "pretrain" else None,
            train_loss=row.get("train_loss"),
            val_loss=row.get("val_loss"),
            finetune_top1=row.get("finetune_top1"),
            wall_s=row.get("wall_s"),
            gpu_hours=row.get("gpu_hours"),
        )
    progress = store.read_json(f"{stage.dir}/progress.json") or {}
    if running is None:
        age = _progress_age_s(store, f"{stage.dir}/progress.json")
        running = age is not None and age < FRESH_S and row is None
    if running:
        state = "running"
    elif row is not None and row.get("status") in ("failed", INTERRUPTED):
        state = row["status"]
    elif progress:
        state = "stopped"
    elif _waiting(store, stage, graph):
        state = "waiting"
    else:
        state = "pending"
    return StageStatus(
        **base,
        state=state,
        step=progress.get("step"),
        train_loss=progress.get("train_loss"),
        val_loss=progress.get("val_loss"),
        finetune_top1=progress.get("finetune_top1"),
        error=row.get("error") if row is not None else None,
        total_steps=progress.get("iterations"),
        images_per_s=progress.get("images_per_s"),
        data_wait=progress.get("data_wait"),
        eta_s=progress.get("eta_s") if state == "running" else None,
        wall_s=progress.get("wall_s"),
        log=_log_of(store, stage, state),
    )


def _log_of(store: ResultStore, stage: Stage, state: str) -> str | None:
    """Where to look when a stage did not finish: its log in the store, if it wrote one."""
    rel = f"{stage.dir}/log.txt"
    if state in ("failed", INTERRUPTED, "stopped") and store.exists(rel):
        return store.path(rel)
    return None


def study_status(
    store: ResultStore, graph: StageGraph, running: Collection[str] | None = None
) -> list[StageStatus]:
    """Every stage's state, pre-training first; ``running``: stage ids a live scheduler has
    in flight."""
    return [
        stage_status(store, s, graph, running=None if running is None else s.stage_id in running)
        for s in graph.stages()
    ]


def mark_interrupted(store: ResultStore, run: Any) -> list[str]:
    """After a signal stopped the run (and Ray with it): each stage it was to run that
    started but did not finish gets a result row with status ``interrupted`` (not failed:
    the next ``mimscale run`` resumes it from its checkpoint). Returns their ids."""
    from scaling.study.tables import COLUMNS, table_of

    marked = []
    for stage_id in run.todo:
        stage = run.graph.get(stage_id)
        if store.stage_row(stage.kind, stage_id) is not None:
            continue  # complete, or failed on its own
        started = [f"{stage.dir}/{n}" for n in ("progress.json", "checkpoint.pt", "finetune.pt")]
        if not any(store.exists(rel) for rel in started):
            continue  # never started: pending
        fields = stage.cell.row_fields() if stage.kind == "pretrain" else {}
        row = {**fields, "stage_id": stage_id, "status": INTERRUPTED, "error": None}
        store.write_table(f"{stage.dir}/result.parquet", table_of(COLUMNS[stage.kind], [row]))
        marked.append(stage_id)
    return marked


def summary(rows: Sequence[StageStatus]) -> str:
    parts = []
    for kind in ("pretrain", "finetune", "diagnostics"):
        mine = [r for r in rows if r.kind == kind]
        if mine:
            counts = Counter(r.state for r in mine)
            states = ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])
            parts.append(f"{len(mine)} {kind} stages: {states}")
    return "; ".join(parts) or "no stages"


def duration(seconds: float | None) -> str:
    """``42s``, ``17m``, ``3h05``, ``2d04h``; ``-`` when unknown."""
    if seconds is None or seconds != seconds:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None or value != value else format(value, fmt)  # None or NaN


def format_status(rows: Sequence[StageStatus], *, compact_over: int = 0) -> str:
    """A fixed-width table, one line per stage, and a summary line.

    With ``compact_over`` > 0 and more stages than that, only the stages that are not done
    or pending are listed (a live view of a large grid).
    """
    shown = list(rows)
    if 0 < compact_over < len(rows):
        shown = [r for r in rows if r.state not in ("done", "pending")]
    head = (
        f"{'stage':<16}  {'kind':<11} {'role':<8} {'model':<12} {'data':<14} {'iterations':>10} "
        f"{'state':<11} {'step':>8} {'img/s':>7} {'eta':>7} {'train_loss':>10} {'val_loss':>9} "
        f"{'top1':>6}  from"
    )
    lines = [head, "-" * len(head)]
    for r in shown:
        upstream = "-"
        if r.upstream:
            upstream = r.upstream + (f"@{r.fork_step}" if r.fork_step else "")
        lines.append(
            f"{r.stage_id:<16}  {r.kind:<11} {r.role:<8} {r.model:<12} {r.data:<14} "
            f"{r.iterations:>10} {r.state:<11} {_num(r.step, 'd'):>8} "
            f"{_num(r.images_per_s, '.0f'):>7} {duration(r.eta_s):>7} "
            f"{_num(r.train_loss, '.4f'):>10} {_num(r.val_loss, '.4f'):>9} "
            f"{_num(r.finetune_top1, '.2f'):>6}  {upstream}"
        )
        if r.state == "failed" and r.error:
            lines.append(f"{'':<18}error: {r.error.splitlines()[0][:160]}")
        if r.log and r.state != "stopped":
            lines.append(f"{'':<18}log: {r.log}")
    lines.append(summary(rows))
    return "\n".join(lines)
