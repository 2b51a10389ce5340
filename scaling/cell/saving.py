"""Saving a phase's checkpoints: where its DCP shards go, and the asynchronous saves.

A phase of several ranks keeps model, optimizer and every rank's RNG streams as DCP
shards (:mod:`scaling.train.shards`) in one of three folders beside its checkpoint
(``<stem>.shards/<0|1|2>``, never one the two newest checkpoints name); the checkpoint
itself (rank 0's small ``torch.save`` blob: step, curves, scaler) names its folder.
An asynchronous save (``resources.async_checkpoint``) copies the state to host memory
and writes the shards from DCP's thread; its checkpoint, built at the save, is written
by rank 0 as soon as every shard is durable (:class:`Commit`), so until then the
previous checkpoint is the one named and a crash of any rank loses nothing already
named.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import posixpath
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from scaling.train.checkpoint import checkpoint_bytes
from scaling.train.shards import CheckpointWriteError, PendingSave, gather_full, save_shards

if TYPE_CHECKING:
    from scaling.cell.context import CellStore, TrialContext

log = logging.getLogger(__name__)


def write_checkpoint(store: CellStore, rel: str, blob: bytes) -> None:
    """Write checkpoint ``rel``; the one it replaces stays as its :func:`previous_name`."""
    store.move(rel, previous_name(rel))
    store.write_bytes(rel, blob)


def previous_name(name: str) -> str:
    """Where a checkpoint's predecessor is kept: ``checkpoint.pt`` → ``checkpoint.prev.pt``."""
    root, ext = posixpath.splitext(name)
    return f"{root}.prev{ext}"


def committed_slots(store: CellStore, rel: str, newest: str) -> list[str]:
    """The shard folders a phase resumed from ``newest`` keeps (newest first): that one and
    the one the previous checkpoint names, so that no later save overwrites either."""
    slots = [newest]
    data = store.read_bytes(previous_name(rel))
    if data is not None:
        with contextlib.suppress(Exception):  # a damaged predecessor names nothing
            older = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            if older.get("shards") not in (None, newest):
                slots.append(older["shards"])
    return slots


@dataclass
class Commit:
    """An asynchronous save under way, and the checkpoint that names its shards: built when
    the save started (that step's state), written by rank 0 from the writer's thread as
    soon as every shard is durable (:meth:`land`), so a crash of any rank after that loses
    nothing; before it, the previous checkpoint is still the one named."""

    save: PendingSave
    rel: str
    blob: bytes | None
    """Rank 0's; None on the other ranks."""
    landed: threading.Event = field(default_factory=threading.Event)
    """Set once :meth:`land` ran (whatever it did)."""
    error: BaseException | None = None
    """Why writing the checkpoint failed, for :meth:`wait` to raise."""
    dropped: bool = False
    """Given up on (:meth:`wait` failed or timed out): never to be named."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def land(self, store: CellStore, future: Any) -> None:
        """The save's done-callback: name its shards if it succeeded and is not dropped."""
        try:
            with self.lock:
                if self.blob is not None and not self.dropped and future.exception() is None:
                    write_checkpoint(store, self.rel, self.blob)
                    log.info("checkpoint %s names %s", self.rel, self.save.rel)
        except BaseException as err:  # raised by wait(), in the phase's thread
            self.error = err
        finally:
            self.landed.set()

    def wait(self, timeout: float | None = None) -> None:
        """Return once the shards are durable and (rank 0) named; else raise
        :class:`~scaling.train.shards.CheckpointWriteError` and never name them."""
        try:
            self.save.wait(timeout)
            if not self.landed.wait(timeout):
                raise CheckpointWriteError(f"{self.rel}: not written in {timeout} s")
        except BaseException:
            with self.lock:
                self.dropped = True
            raise
        if self.error is not None:
            raise CheckpointWriteError(
                f"{self.rel}: writing the checkpoint that names {self.save.rel} failed: "
                f"{type(self.error).__name__}: {self.error}"
            ) from self.error


@dataclass
class Shards:
    """A phase of several ranks: its checkpoints keep model, optimizer and every rank's RNG
    streams as DCP shards (:mod:`scaling.train.shards`), each rank writing its own."""

    model: Any
    optimizer: Any = None
    slots: list[str] = field(default_factory=list)
    """Shard folders the newest checkpoints name, newest first (never overwritten)."""
    asynchronous: bool = False
    """Write the shards in the background (``resources.async_checkpoint``)."""
    group: Any = None
    """The gloo group background writes use (:func:`~scaling.train.shards.background_group`)."""
    pending: Commit | None = None
    """The asynchronous save under way (at most one); its slot counts as taken."""

    def next_slot(self, checkpoint_rel: str) -> str:
        """One of three folders beside the checkpoint, none of the two newest ones (the
        caller commits or abandons a pending save first, so these are committed ones)."""
        root = posixpath.splitext(checkpoint_rel)[0] + ".shards"
        free = next(f"{root}/{i}" for i in range(3) if f"{root}/{i}" not in self.slots[:2])
        self.slots.insert(0, free)
        return free


def _named(state: dict[str, Any], rel: str) -> dict[str, Any]:
    """``state`` without model and optimizer, naming the shards at ``rel`` instead."""
    rest = {k: v for k, v in state.items() if k not in ("model", "optimizer")}
    return {**rest, "shards": rel}


def shard_state(ctx: TrialContext, rel: str, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its model and optimizer written as DCP shards at ``rel`` (collective):
    what remains names them. Without shards: ``state`` with DTensors made whole."""
    if ctx.shards is not None and "model" in state:
        s = ctx.shards
        save_shards(ctx.store, rel, s.model, s.optimizer, rank=ctx.rank, device=ctx.device)
        state = _named(state, rel)
    return gather_full(state)  # e.g. the final encoder under FSDP2: one file


def start_shards(ctx: TrialContext, name: str, rel: str, state: dict[str, Any]) -> Commit:
    """Start writing ``state``'s model and optimizer as DCP shards at ``rel`` in the
    background (collective); rank 0 writes checkpoint ``name``, the rest of ``state``
    naming them, once they are durable (:class:`Commit`)."""
    s = ctx.shards
    assert s is not None
    save = save_shards(
        ctx.store, rel, s.model, s.optimizer, rank=ctx.rank, device=ctx.device,
        asynchronous=True, group=s.group,
    )  # fmt: skip
    rest = gather_full(_named(state, rel))
    commit = Commit(save, ctx.rel(name), checkpoint_bytes(rest) if ctx.is_main else None)
    save.future.add_done_callback(functools.partial(commit.land, ctx.store))
    return commit
