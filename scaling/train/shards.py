"""Sharded, asynchronous checkpoints: ``torch.distributed.checkpoint`` (DCP) on any store.

A resumable checkpoint of a multi-rank phase is two parts: a small ``torch.save`` blob
that rank 0 writes (step, curves, scaler, the loss window: what the cell's context
saved before) and a DCP directory that every rank writes its own shard of — the model
and AdamW state as :func:`~torch.distributed.checkpoint.state_dict.get_state_dict`
gives them (DTensor shards under FSDP2, one deduplicated copy under DDP) and the rank's
RNG states under a key of its own (``rng.rank<r>``). Loading asks DCP for the local
state only: each rank reads the files that hold its shards, and DCP reshards when the
number of ranks changed (same global batch).

The files go through the results store (:class:`StoreFileSystem`), so local disks,
shared file systems and object storage (the store's pyarrow S3 client) all work; each
file is written whole, atomically, by the store. :func:`save_shards` can return at once
and write in a background thread (``asynchronous``): the state is copied to host memory
first, so training goes on; :class:`PendingSave` says when it is durable.
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import (
    FileSystemBase,
    FileSystemReader,
    FileSystemWriter,
)
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

log = logging.getLogger(__name__)


class Store(Protocol):
    """The store calls DCP's files need (``scaling.cell.context.CellStore`` has them)."""

    def exists(self, rel: str) -> bool: ...
    def write_bytes(self, rel: str, data: bytes) -> None: ...
    def read_bytes(self, rel: str) -> bytes | None: ...
    def move(self, src: str, dst: str) -> None: ...


class _Upload(io.BytesIO):
    """A file being written: its bytes go to the store, whole, when it is closed."""

    def __init__(self, store: Store, rel: str) -> None:
        super().__init__()
        self.store, self.rel = store, rel

    def close(self) -> None:
        if not self.closed:
            self.store.write_bytes(self.rel, self.getvalue())
        super().close()


class StoreFileSystem(FileSystemBase):
    """DCP's file system calls on a results store: whole files, written atomically."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @contextmanager
    def create_stream(self, path: Any, mode: str) -> Generator[io.IOBase, None, None]:
        rel = str(path)
        if "r" in mode:
            data = self.store.read_bytes(rel)
            if data is None:
                raise FileNotFoundError(f"{rel}: no such checkpoint file in the store")
            yield io.BytesIO(data)
            return
        upload = _Upload(self.store, rel)
        yield upload
        upload.close()  # DCP may have closed it already

    def concat_path(self, path: Any, suffix: str) -> str:
        return posixpath.join(str(path), suffix)

    def rename(self, path: Any, new_path: Any) -> None:
        self.store.move(str(path), str(new_path))

    def init_path(self, path: Any) -> str:
        return str(path)

    def mkdir(self, path: Any) -> None:  # a store has no directories to make
        pass

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False  # only ever passed explicitly, as a writer or reader

    def exists(self, path: Any) -> bool:
        return self.store.exists(str(path))

    def rm_file(self, path: Any) -> None:
        pass  # files are replaced whole by the next write


class _Writer(FileSystemWriter):
    def __init__(self, store: Store, rel: str) -> None:
        super().__init__(rel, single_file_per_rank=True, sync_files=False, overwrite=True)
        self.fs, self.path = StoreFileSystem(store), rel


class _Reader(FileSystemReader):
    def __init__(self, store: Store, rel: str) -> None:
        super().__init__(rel)
        self.fs, self.path = StoreFileSystem(store), rel


def _group() -> Any:
    return dist.group.WORLD if dist.is_available() and dist.is_initialized() else None


def background_group() -> Any:
    """A gloo group of its own for asynchronous saves, so their collectives (in DCP's
    thread) never interleave with training's; None without a process group. Collective."""
    return dist.new_group(backend="gloo") if _group() is not None else None


def _rng_key(rank: int) -> str:
    return f"rng.rank{rank}"


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This rank's streams: the CPU generator and its own GPU's (not every visible one)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int, device: Any):
    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": osd, _rng_key(rank): _rng_state(torch.device(device))}


class CheckpointWriteError(RuntimeError):
    """An asynchronous save that failed or did not finish: its checkpoint is not usable."""


@dataclass
class PendingSave:
    """A save under way; :meth:`wait` returns once every shard is in the store."""

    future: Any = None
    rel: str = ""
    """Where the shards go (for the error of a failed write)."""

    def wait(self, timeout: float | None = None) -> None:
        """Block until the save is durable (on the coordinator: its metadata too, so every
        rank's shard); a failed write, or one not done in ``timeout`` s, raises
        :class:`CheckpointWriteError` naming the checkpoint."""
        future, self.future = self.future, None
        if future is None:
            return
        try:
            future.result(timeout=timeout)
        except (Exception, CheckpointException) as err:  # DCP's is a BaseException
            why = f"failed: {_cause(err)}" if future.done() else f"did not finish in {timeout} s"
            raise CheckpointWriteError(
                f"{self.rel}: the asynchronous checkpoint write {why}"
            ) from err


def _cause(err: BaseException) -> str:
    """What failed, by rank when DCP gathered it from the ranks (not its tracebacks)."""
    failures = getattr(err, "failures", None)
    if isinstance(err, CheckpointException) and failures:
        return "; ".join(
            f"rank {rank}: {type(exc).__name__}: {exc}"
            for rank, (exc, *_) in sorted(failures.items())
        )
    return f"{type(err).__name__}: {err}"


def save_shards(
    store: Store,
    rel: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    rank: int,
    device: Any = "cpu",
    asynchronous: bool = False,
    group: Any = None,
) -> PendingSave:
    """Every rank writes its shard of model, optimizer and RNG state under ``rel``.

    Collective: all ranks call it. ``asynchronous`` copies the state to host memory and
    writes it from a thread; ``group`` is the process group the background write uses
    (a gloo group of its own, so it never interleaves with the training collectives).
    """
    state = _state(model, optimizer, rank, device)
    writer = _Writer(store, rel)
    group = group if group is not None else _group()
    if asynchronous:
        future = dcp.async_save(
            state, storage_writer=writer, process_group=group, no_dist=group is None
        )
        return PendingSave(future, rel)
    dcp.save(state, storage_writer=writer, process_group=group, no_dist=group is None)
    return PendingSave()


def saved_ranks(store: Store, rel: str) -> int:
    """How many ranks wrote the checkpoint at ``rel`` (the RNG keys it holds)."""
    metadata = _Reader(store, rel).read_metadata()
    return len({k.split(".")[1] for k in metadata.state_dict_metadata if k.startswith("rng.")})


def load_shards(
    store: Store,
    rel: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    rank: int,
    world_size: int,
    device: Any = "cpu",
) -> bool:
    """Load this rank's part of the checkpoint at ``rel`` into ``model`` and ``optimizer``
    (resharded when the number of ranks changed); restore the rank's RNG streams.

    Returns whether the RNG streams were restored: False when the checkpoint was written
    by another number of ranks (then this rank has no stream of its own in it).
    """
    saved = saved_ranks(store, rel)
    state = _state(model, optimizer, rank, device)
    same_ranks = saved == world_size
    if not same_ranks:
        state.pop(_rng_key(rank))
    group = _group()
    dcp.load(state, storage_reader=_Reader(store, rel), process_group=group, no_dist=group is None)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    if same_ranks:
        rng = state[_rng_key(rank)]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.device(device).type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], torch.device(device))
    return same_ranks


def gather_full(obj: Any) -> Any:
    """``obj`` with every DTensor replaced by its whole tensor (on the CPU), recursively
    through dicts and lists. Collective under FSDP2: every rank calls it, in one order."""
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):
        return obj.full_tensor().cpu()
    if isinstance(obj, dict):
        return {k: gather_full(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(gather_full(v) for v in obj)
    return obj
