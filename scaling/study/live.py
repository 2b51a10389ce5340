"""Progress that answers "when will it finish": study totals, a live view, event lines.

:func:`study_totals` adds up the stages' states (:mod:`scaling.study.status`): GPU-hours
spent (finished stages' own figure, plus time trained so far × GPUs held for the others)
against the plan's estimate, and the time left from measured throughput. A running
stage's time left is its own ETA (rate since it started × steps left); a stopped one's
from its own pace; a stage not yet started takes the pace per step of the stages of
the same kind and model that ran (a fine-tune: their wall time); a stage with nothing
to go by is counted as unmeasured, and the study's ETA is then a lower bound (``≥``).
The study's ETA is the sum of what is left over the stages running at once.

:class:`LiveView` shows it while a grid runs: on a terminal, the table and the totals
redrawn in place; otherwise (a log file, CI, ``nohup``) one line per event — a stage
starts, passes every ``every_pct`` percent, finishes, fails — instead of a table every
few seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from scaling.study.status import STATES, StageStatus, duration, format_status

log = logging.getLogger(__name__)

OVER = ("done", "failed")
"""States with nothing left to run in this run."""
DATA_WAIT_SHOWN = 0.1
"""A running stage's line says how long it waits on data from this share of the time."""


@dataclass(frozen=True)
class Totals:
    counts: dict[str, int]
    """Stages by state."""
    gpu_hours_spent: float
    gpu_hours_planned: float | None
    eta_s: float | None
    """None: nothing measured yet."""
    unmeasured: int
    """Stages left whose time nothing measured predicts (the ETA is a lower bound)."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _pace(rows: Sequence[StageStatus]) -> dict[tuple[str, str], float]:
    """Seconds per step by (kind, model): pre-training from the stages that trained; a
    fine-tune's value is its whole wall time (its length comes from its data)."""
    seen: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        key = (r.kind, r.model)
        if r.kind != "pretrain":
            if r.state == "done" and r.wall_s:
                seen[key].append(r.wall_s)
        elif r.state == "done" and r.wall_s and r.iterations:
            seen[key].append(r.wall_s / r.iterations)
        elif r.wall_s and r.step:
            seen[key].append(r.wall_s / r.step)
    return {k: sum(v) / len(v) for k, v in seen.items()}


def _left_s(r: StageStatus, pace: dict[tuple[str, str], float]) -> float | None:
    """Seconds ``r`` still needs (None: unknown)."""
    if r.state in OVER:
        return 0.0
    if r.eta_s is not None:
        return r.eta_s
    total = r.total_steps or r.iterations
    if r.wall_s and r.step and total:  # its own pace so far
        return r.wall_s / r.step * max(0, total - r.step)
    rate = pace.get((r.kind, r.model))
    if rate is None:
        return None
    if r.kind != "pretrain":
        return rate
    return rate * max(0, r.iterations - (r.step or r.fork_step or 0))


def study_totals(rows: Sequence[StageStatus], *, planned_gpu_hours: float | None = None) -> Totals:
    """The study's counts, GPU-hours and ETA from its stages' rows."""
    pace = _pace(rows)
    spent = sum(
        r.gpu_hours or 0.0 if r.state == "done" else (r.wall_s or 0.0) * r.gpus / 3600.0
        for r in rows
    )
    left = [_left_s(r, pace) for r in rows]
    known = [s for s in left if s is not None]
    unmeasured = len(left) - len(known)
    running = sum(r.state == "running" for r in rows)
    eta = sum(known) / max(running, 1)
    return Totals(
        counts=dict(Counter(r.state for r in rows)),
        gpu_hours_spent=spent,
        gpu_hours_planned=planned_gpu_hours,
        eta_s=None if unmeasured and not eta else eta,
        unmeasured=unmeasured,
    )


def format_totals(t: Totals) -> str:
    """One line: stages by state · GPU-hours spent of planned · ETA."""
    states = ", ".join(f"{t.counts[s]} {s}" for s in STATES if t.counts.get(s))
    planned = "" if t.gpu_hours_planned is None else f" of {t.gpu_hours_planned:.3g} planned"
    if t.eta_s is None:
        eta = "ETA unknown until a stage has measured its speed"
    else:
        bound = "≥ " if t.unmeasured else ""
        eta = f"ETA {bound}{duration(t.eta_s)}"
        if t.unmeasured:
            eta += f" ({t.unmeasured} stages not measured yet)"
    return f"{t.total} stages: {states} · GPU-hours {t.gpu_hours_spent:.3g}{planned} · {eta}"


def planned_gpu_hours(study: Any) -> float | None:
    """The plan's pre-training GPU-hours (with prefix sharing where the study shares), or
    None when the plan cannot say (e.g. manifests it cannot size)."""
    from scaling.study.plan import plan_study

    try:
        plan = plan_study(study)
    except Exception as err:  # the view goes on without the figure
        log.warning("no planned GPU-hours for the progress view: %s", err)
        return None
    if study.grid.share_prefix and plan.sharing:
        return plan.sharing_total()["shared_gpu_hours"]
    return plan.total_gpu_hours


class LiveView:
    """The running grid's progress: redrawn in place on a terminal, else event lines."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        planned_gpu_hours: float | None = None,
        every_pct: int = 10,
        compact_over: int = 24,
        tty: bool | None = None,
    ) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.planned, self.every_pct, self.compact_over = planned_gpu_hours, every_pct, compact_over
        self._drawn = 0
        self._seen: dict[str, tuple[str, int]] = {}

    def update(self, rows: Sequence[StageStatus]) -> None:
        totals = study_totals(rows, planned_gpu_hours=self.planned)
        if self.tty:
            self._redraw(format_status(rows, compact_over=self.compact_over), totals)
        else:
            for line in self.events(rows, totals):
                self.stream.write(line + "\n")
        self.stream.flush()

    def _redraw(self, table: str, totals: Totals) -> None:
        text = f"{table}\n{format_totals(totals)}"
        if self._drawn:  # to the first line drawn, then clear to the end of the screen
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
        self.stream.write(text + "\n")
        self._drawn = text.count("\n") + 1

    def events(self, rows: Sequence[StageStatus], totals: Totals) -> list[str]:
        """The lines of what changed since the last call (the first call: only the stages
        running then; the others were what they are before this run)."""
        first, lines, ended = not self._seen, [], False
        stamp = time.strftime("%H:%M:%S")
        for r in rows:
            bucket = self._bucket(r)
            before = self._seen.get(r.stage_id)
            self._seen[r.stage_id] = (r.state, bucket)
            if before == (r.state, bucket) or (first and r.state != "running"):
                continue
            line = self._event(r, before[0] if before else None, bucket)
            if line:
                lines.append(f"{stamp} {line}")
                ended = ended or r.state in OVER
        if ended:  # a stage ended: where the study stands
            lines.append(f"{stamp} {format_totals(totals)}")
        return lines

    def _bucket(self, r: StageStatus) -> int:
        total = r.total_steps or r.iterations
        if r.state != "running" or not r.step or not total:
            return 0
        pct = int(100 * r.step / total) // self.every_pct * self.every_pct
        if pct >= 100:  # said by the "done" line: keep the last bucket said
            return self._seen.get(r.stage_id, ("", 0))[1]
        return pct

    def _event(self, r: StageStatus, before: str | None, pct: int) -> str | None:
        name = f"{r.kind} {r.stage_id} ({r.model} on {r.data}, {r.iterations} steps)"
        if r.state == "running" and before != "running":
            return f"start {name}"
        if r.state == "running":
            speed = "" if r.images_per_s is None else f" · {r.images_per_s:.0f} img/s"
            if r.data_wait is not None and r.data_wait >= DATA_WAIT_SHOWN:
                speed += f" (waiting on data {r.data_wait:.0%})"
            total = r.total_steps or r.iterations
            return f"{pct:3d}% {r.kind} {r.stage_id} step {r.step}/{total}{speed} · ETA " + (
                duration(r.eta_s)
            )
        if r.state == "done":
            got = [f"val_loss {r.val_loss:.4f}"] if r.val_loss is not None else []
            got += [f"top1 {r.finetune_top1:.2f}"] if r.finetune_top1 is not None else []
            return f"done {name}: {', '.join(got) or 'complete'} in {duration(r.wall_s)}"
        if r.state in ("failed", "interrupted"):
            where = f" · log: {r.log}" if r.log else ""
            return f"{r.state.upper()} {name}: {r.error or 'no result'}{where}"
        return None
