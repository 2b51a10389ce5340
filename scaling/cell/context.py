"""What every phase of a cell shares: where it writes, on which device, which rank.

A cell never imports the study room: it writes through any object with the
:class:`CellStore` methods (the study's :class:`~scaling.study.store.ResultStore`
in practice), under ``cells/<cell_id>/``. Also here: the cell's one error type,
the device choice, and the fault injection the reliability tests use
(``MIMSCALE_FAIL_AT="[finetune@]<step>:<marker>"`` raises once at that step of
pre-training, or of fine-tuning; the marker file records that it did;
``MIMSCALE_NAN_AT="<rank>:<n>"`` makes one rank's loss NaN from its n-th training
forward). A phase of several ranks checkpoints its model and optimizer as DCP shards
(:mod:`scaling.cell.saving`), written in the background when asked; the final encoder is
gathered into one file.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from scaling.cell.saving import (
    Shards,
    previous_name,
    shard_state,
    start_shards,
    write_checkpoint,
)
from scaling.config.schema import CellConfig
from scaling.errors import UserError
from scaling.train.checkpoint import checkpoint_bytes, read_checkpoint
from scaling.train.shards import gather_full

log = logging.getLogger(__name__)

Reporter = Callable[[dict[str, Any]], None]
SETTLE_S = 300.0
"""How long a failing phase waits for its asynchronous checkpoint to become durable."""


class CellError(UserError):
    """A cell that cannot go on (non-finite loss, too many bad images, bad manifests)."""


class CellStore(Protocol):
    """The file access a cell needs (atomic writes, relative to the study's output)."""

    def exists(self, rel: str) -> bool: ...
    def write_bytes(self, rel: str, data: bytes) -> None: ...
    def read_bytes(self, rel: str) -> bytes | None: ...
    def move(self, src: str, dst: str) -> None: ...
    def damaged(self, rel: str, why: str) -> None: ...
    def write_json(self, rel: str, obj: Any) -> None: ...
    def write_stage_result(
        self, kind: str, row: dict[str, Any], points: list[dict[str, Any]]
    ) -> None: ...


@dataclass
class TrialContext:
    """What both phases share: where to write, on which device, which rank."""

    cell: CellConfig
    store: CellStore
    stage_id: str
    stage_dir: str
    """The stage's directory in the store, e.g. ``stages/pretrain/<id>``."""
    device: torch.device
    report: Reporter | None = None
    rank: int = 0
    world_size: int = 1
    shards: Shards | None = None
    """Set by the runner when the phase runs on several ranks."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rel(self, name: str) -> str:
        return f"{self.stage_dir}/{name}"

    def point(
        self, phase: str, step: int, split: str, metric: str, value: float, lr: float
    ) -> dict[str, Any]:
        """One point of a stage's curve (the store adds the stage's id when it writes it)."""
        return {
            "phase": phase,
            "step": int(step),
            "split": split,
            "metric": metric,
            "value": float(value),
            "lr": float(lr),
        }

    def progress(self, **fields: Any) -> None:
        """Latest state for ``mimscale status`` and the driver's progress table."""
        if not self.is_main:
            return
        self.store.write_json(self.rel("progress.json"), fields)
        if self.report is not None:
            self.report(dict(fields))

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Write checkpoint ``name``; the one it replaces stays as ``<stem>.prev<suffix>``.

        Every rank calls it: on several ranks the model and optimizer go to DCP shards
        each rank writes (a slot the newest two checkpoints do not name), then rank 0
        writes the small rest, which names them. Asynchronous shards: the save returns
        once the state is copied to host memory, and the rest is written when they are
        durable (:meth:`flush`: at the next save, at the end of the phase).
        """
        self.flush()
        s = self.shards
        if s is not None and "model" in state:
            slot = s.next_slot(self.rel(name))
            if s.asynchronous:
                s.pending = start_shards(self, name, slot, state)
                return
            state = shard_state(self, slot, state)
        else:
            state = gather_full(state)
        if self.is_main:
            write_checkpoint(self.store, self.rel(name), checkpoint_bytes(state))

    def flush(self, timeout: float | None = None) -> None:
        """Wait for the asynchronous save under way (every rank calls it: before the next
        save, the phase's result, the end of its process group) until its checkpoint is
        written. A failed write raises :class:`~scaling.train.shards.CheckpointWriteError`
        naming it; the previous checkpoint stays the one named."""
        pending = self.shards.pending if self.shards is not None else None
        if pending is not None:
            self.shards.pending = None
            pending.wait(timeout)

    def settle(self, timeout: float = SETTLE_S) -> None:
        """After a failure: let the save under way finish if it does within ``timeout``,
        else keep the previous checkpoint (logged); never raises."""
        try:
            self.flush(timeout)
        except Exception as err:  # the phase's own error is the one to report
            log.warning("%s; resuming will use the previous checkpoint", err)

    def load(self, name: str) -> dict[str, Any] | None:
        """This stage's newest readable checkpoint ``name`` (:func:`load_checkpoint`)."""
        return load_checkpoint(self.store, self.rel(name))


def load_checkpoint(store: CellStore, rel: str) -> dict[str, Any] | None:
    """The newest readable checkpoint at ``rel``: it, else the previous one, else None.

    A damaged one (truncated, flipped bytes) is reported with its path and set aside by
    the store; the log says which checkpoint the stage resumes from, or that it starts
    afresh.
    """
    damaged = []
    for candidate in (rel, previous_name(rel)):
        data = store.read_bytes(candidate)
        if data is None:
            continue
        try:
            state = read_checkpoint(data, candidate)
        except Exception as err:  # torch.load of damaged bytes: zip, pickle, EOF errors
            store.damaged(candidate, f"not a readable checkpoint: {type(err).__name__}: {err}")
            damaged.append(candidate)
            continue
        if damaged:
            log.warning("%s: resuming from the previous checkpoint %s", damaged[0], candidate)
        return state
    if damaged:
        log.warning("%s: no readable checkpoint left; the stage starts afresh", damaged[0])
    return None


def seed_checkpoint(ctx: TrialContext, targets: list[str], state: dict[str, Any]) -> None:
    """Write ``state`` as a resumable checkpoint at each ``targets`` path that has none yet
    (a trunk seeding its branches; a stage keeping its prefix). Every rank calls it: on
    several ranks each target gets its own shards (``<stem>.shards/seed``)."""
    missing = [t for t in targets if not ctx.store.exists(t)]  # every rank, before writes
    for target in missing:  # the seeded stage's own wall time starts at 0: counted once
        seeded = shard_state(ctx, posixpath.splitext(target)[0] + ".shards/seed", state)
        if ctx.is_main:
            ctx.store.write_bytes(target, checkpoint_bytes({**seeded, "wall_s": 0.0}))


def pick_device(assigned: torch.device | None = None) -> torch.device:
    """The device a trial trains on: ``MIMSCALE_DEVICE`` if set (``cpu``, ``cuda``,
    ``cuda:1``; the driver forwards it to every trial), else ``assigned`` (a DDP
    worker's GPU as its launcher mapped it), else this rank's GPU, else the CPU."""
    forced = os.environ.get("MIMSCALE_DEVICE")
    if forced:
        try:
            device = torch.device(forced)
        except RuntimeError as err:
            raise CellError(f"MIMSCALE_DEVICE: {forced!r} is not a torch device ({err})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CellError(f"MIMSCALE_DEVICE: {forced!r}, but this machine has no CUDA device")
        return device
    if assigned is not None:
        return assigned
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def maybe_inject_nan(model: torch.nn.Module, rank: int) -> None:
    """Make rank ``r``'s model output NaN from its ``n``-th training forward on
    (``MIMSCALE_NAN_AT="r:n"``; reliability tests only): a non-finite loss on one rank."""
    spec = os.environ.get("MIMSCALE_NAN_AT", "")
    if not spec or int(spec.split(":")[0]) != rank:
        return
    at, calls = int(spec.split(":")[1]), [0]

    def poison(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        calls[0] += module.training
        return output * float("nan") if module.training and calls[0] >= at else output

    model.register_forward_hook(poison)


def maybe_inject_fault(phase: str, step: int, stage_id: str = "") -> None:
    """Raise once at the configured step (reliability tests only).

    ``MIMSCALE_FAIL_AT`` is one or more ``[phase@]step[#stage]:marker`` separated by
    ``;``: the phase is ``pretrain`` (the default) or ``finetune``; ``#stage`` limits
    the fault to stages whose id starts with it; each fault fires once (its marker file
    records that it did).
    """
    for spec in filter(None, os.environ.get("MIMSCALE_FAIL_AT", "").split(";")):
        where, _, marker = spec.partition(":")
        where, _, only = where.partition("#")
        at_phase, _, at = where.rpartition("@")
        if (at_phase or "pretrain") != phase or int(at) != step or not marker:
            continue
        if not stage_id.startswith(only) or Path(marker).exists():
            continue
        Path(marker).write_text(f"failed at {phase} step {step}\n")
        name = {"pretrain": "pre-training", "finetune": "fine-tuning"}[phase]
        raise RuntimeError(f"injected fault at {name} step {step} (MIMSCALE_FAIL_AT)")
