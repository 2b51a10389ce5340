"""Reading the stages' logs back from the results store (``mimscale logs``).

Each stage writes ``stages/<kind>/<id>/log.txt`` (rank 0, every attempt) and, when a rank
other than 0 crashed, ``log.rank<r>.txt`` beside it (:mod:`scaling.cell.stagelog`). A
cell's id names its stages (pre-training, then fine-tuning); a stage id names itself; a
unique prefix of either will do. ``follow`` prints what is added until every stage named
has a result (complete or failed), reading through the store, so it works the same on a
shared file system and on object storage (where the log grows by whole uploads).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from scaling.errors import UserError


class LogsError(UserError):
    """An id that names no stage or cell of the study, or several."""


@dataclass(frozen=True)
class StageLogRef:
    kind: str
    stage_id: str

    @property
    def dir(self) -> str:
        return f"stages/{self.kind}/{self.stage_id}"


def resolve(graph: Any, ident: str) -> list[StageLogRef]:
    """The stages ``ident`` names: a stage (any kind) or a cell (its stages, upstream first)."""
    stages = {s.stage_id: s.kind for s in graph.stages()}
    cells = {ft or pt: [pt, *([ft] if ft else [])] for _, pt, ft in graph.cells}
    hits = {i for i in stages if i.startswith(ident)} | {i for i in cells if i.startswith(ident)}
    if not ident or not hits:
        raise LogsError(f"{ident!r}: no stage or cell of the study has that id (see status)")
    if len(hits) > 1:
        raise LogsError(f"{ident!r}: names {len(hits)} stages or cells; give more of the id")
    (hit,) = hits
    ids = cells.get(hit, [hit])
    return [StageLogRef(stages[i], i) for i in ids]


def log_files(store: Any, ref: StageLogRef) -> list[str]:
    """The stage's log files in the store: ``log.txt`` first, then other ranks' by rank."""
    selector = pafs.FileSelector(store.path(ref.dir), allow_not_found=True)
    names = [i.base_name for i in store.fs.get_file_info(selector)]
    ranks = sorted(
        (n for n in names if n.startswith("log.rank") and n.endswith(".txt")),
        key=lambda n: int(n[len("log.rank") : -len(".txt")] or 0),
    )
    return [f"{ref.dir}/{n}" for n in ("log.txt", *ranks) if n in names]


def show(store: Any, refs: list[StageLogRef], write: Callable[[str], None]) -> int:
    """Print every log of ``refs`` with a header line each; returns how many there were."""
    count = 0
    for ref in refs:
        files = log_files(store, ref)
        if not files:
            write(f"==> {ref.kind} stage {ref.stage_id}: no log yet ({store.path(ref.dir)})\n")
        for rel in files:
            write(f"==> {store.path(rel)} <==\n")
            write((store.read_bytes(rel) or b"").decode("utf-8", "replace"))
            count += 1
    return count


def _ended(store: Any, ref: StageLogRef) -> bool:
    return store.exists(f"{ref.dir}/result.parquet")


def follow(
    store: Any,
    refs: list[StageLogRef],
    write: Callable[[str], None],
    *,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
) -> None:
    """Print each stage's ``log.txt`` as it grows, until every stage has a result (or
    ``timeout_s``); then any other ranks' logs a crash left."""
    shown = dict.fromkeys(refs, 0)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        done = all(_ended(store, r) for r in refs)  # before the read: the last lines too
        for ref in refs:
            data = store.read_bytes(f"{ref.dir}/log.txt") or b""
            if len(data) > shown[ref]:
                if shown[ref] == 0:
                    write(f"==> {store.path(ref.dir)}/log.txt <==\n")
                write(data[shown[ref] :].decode("utf-8", "replace"))
                shown[ref] = len(data)
        if done or (deadline is not None and time.monotonic() > deadline):
            break
        time.sleep(poll_s)
    for ref in refs:
        for rel in log_files(store, ref)[1:]:
            write(f"==> {store.path(rel)} <==\n")
            write((store.read_bytes(rel) or b"").decode("utf-8", "replace"))
