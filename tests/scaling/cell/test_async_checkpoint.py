"""Asynchronous sharded checkpoints of a cell's phase (:meth:`TrialContext.save`) on a real
results store whose shard writes can be held back (slow storage) or fail (a full disk):
while a save is under way the checkpoint still names the previous, complete one; it names
the new one only once its shards are durable; a failed write is an error naming it. Also:
an FSDP2 phase refuses a checkpoint one rank wrote, saying what to do."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from scaling.cell.context import CellError, TrialContext
from scaling.cell.runner import PhaseRunner
from scaling.cell.saving import Shards, committed_slots
from scaling.study.store import ResultStore
from scaling.train.checkpoint import read_checkpoint
from scaling.train.shards import CheckpointWriteError, load_shards

STAGE = "stages/pretrain/s0"
CKPT = f"{STAGE}/checkpoint.pt"
PREV = f"{STAGE}/checkpoint.prev.pt"


class HeldStore(ResultStore):
    """A results store whose DCP shard files wait until ``released`` (storage latency made
    visible), or fail as a full disk would when ``full``."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.released = threading.Event()
        self.released.set()
        self.full = False

    def write_bytes(self, rel: str, data: bytes) -> None:
        if rel.endswith(".distcp"):
            assert self.released.wait(timeout=60), "a shard write held for over a minute"
            if self.full:
                raise OSError(28, "No space left on device", rel)
        super().write_bytes(rel, data)


def _model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(step))
    model(x).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> dict:
    return {
        "points": [{"step": step}],
        "step": step,
        "window": [],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": {},
    }


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _named(store: ResultStore, rel: str = CKPT) -> tuple[int, str]:
    """(step, shard folder) of the checkpoint blob at ``rel``."""
    state = read_checkpoint(store.read_bytes(rel), rel)
    return state["step"], state["shards"]


def _resumed(store: ResultStore, rel: str = CKPT) -> dict[str, torch.Tensor]:
    """The weights a fresh process resumes with from the checkpoint at ``rel``."""
    model, optimizer = _model()
    _, shards = _named(store, rel)
    assert load_shards(store, shards, model, optimizer, rank=0, world_size=1)
    return _weights(model)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def phase(tiny_cell: Any, tmp_path: Path) -> Iterator[tuple[TrialContext, HeldStore]]:
    """A one-process phase with asynchronous shards (DCP without a process group)."""
    store = HeldStore(str(tmp_path / "out"))
    model, optimizer = _model()
    ctx = TrialContext(
        cell=tiny_cell(),
        store=store,
        stage_id="s0",
        stage_dir=STAGE,
        device=torch.device("cpu"),
        shards=Shards(model, optimizer, asynchronous=True),
    )
    yield ctx, store
    store.released.set()  # a failing test never leaves a writer thread waiting
    ctx.settle(timeout=60)


def test_a_checkpoint_names_its_shards_only_once_they_are_durable(phase) -> None:
    ctx, store = phase
    model, optimizer = ctx.shards.model, ctx.shards.optimizer
    _train(model, optimizer, 1)
    ctx.save("checkpoint.pt", _state(model, optimizer, 1))
    ctx.flush()
    first = _weights(model)
    assert _named(store) == (1, f"{STAGE}/checkpoint.shards/0")

    _train(model, optimizer, 2)
    second = _weights(model)
    store.released.clear()  # step 2's shards reach the store slowly
    ctx.save("checkpoint.pt", _state(model, optimizer, 2))
    assert ctx.shards.pending is not None  # save returned with the write under way
    _train(model, optimizer, 3)  # training goes on: the save holds a copy of step 2
    assert _named(store) == (1, f"{STAGE}/checkpoint.shards/0")  # still the last complete
    assert _equal(_resumed(store), first)  # a crash now resumes from step 1
    assert not store.exists(PREV)

    store.released.set()  # rank 0 names the shards as soon as they are durable
    assert ctx.shards.pending.landed.wait(timeout=60)
    assert _named(store) == (2, f"{STAGE}/checkpoint.shards/1")
    ctx.flush()
    assert ctx.shards.pending is None
    assert _named(store, PREV) == (1, f"{STAGE}/checkpoint.shards/0")
    assert _equal(_resumed(store), second)  # step 2's weights, not step 3's
    assert _equal(_resumed(store, PREV), first)


def test_the_next_save_waits_for_the_pending_one_and_spares_both_newest_slots(phase) -> None:
    ctx, store = phase
    model, optimizer = ctx.shards.model, ctx.shards.optimizer
    slots = []
    for step in range(1, 5):  # no flush between saves
        _train(model, optimizer, step)
        ctx.save("checkpoint.pt", _state(model, optimizer, step))
        slots.append(ctx.shards.slots[0])
        if step > 1:  # the save waited for its predecessor's (its own may be named too)
            assert _named(store)[0] >= step - 1
    assert [s[-1] for s in slots] == ["0", "1", "2", "0"]  # never the two newest committed
    ctx.flush()
    assert _named(store) == (4, slots[-1]) and _named(store, PREV) == (3, slots[-2])


def test_a_failed_background_write_is_an_error_naming_the_checkpoint(phase) -> None:
    ctx, store = phase
    model, optimizer = ctx.shards.model, ctx.shards.optimizer
    ctx.save("checkpoint.pt", _state(model, optimizer, 1))
    ctx.flush()
    store.full = True
    ctx.save("checkpoint.pt", _state(model, optimizer, 2))  # returns: the write fails later
    with pytest.raises(CheckpointWriteError) as failed:
        ctx.save("checkpoint.pt", _state(model, optimizer, 3))  # waits for it first
    assert str(failed.value) == (
        f"{STAGE}/checkpoint.shards/1: the asynchronous checkpoint write failed: rank 0: "
        f"OSError: [Errno 28] No space left on device: '{STAGE}/checkpoint.shards/1/__0_0.distcp'"
    )
    assert _named(store) == (1, f"{STAGE}/checkpoint.shards/0")  # the last good one


def test_a_failing_phase_keeps_the_previous_checkpoint_when_the_save_does_not_finish(
    phase, caplog: pytest.LogCaptureFixture
) -> None:
    ctx, store = phase
    model, optimizer = ctx.shards.model, ctx.shards.optimizer
    ctx.save("checkpoint.pt", _state(model, optimizer, 1))
    ctx.flush()
    store.released.clear()
    ctx.save("checkpoint.pt", _state(model, optimizer, 2))
    given_up = ctx.shards.pending
    with caplog.at_level(logging.WARNING, logger="scaling.cell.context"):
        ctx.settle(timeout=0.5)  # the phase failed: it waits a while, then gives up
    expected = (
        f"{STAGE}/checkpoint.shards/1: the asynchronous checkpoint write did not finish in "
        "0.5 s; resuming will use the previous checkpoint"
    )
    assert expected in caplog.text
    assert _named(store) == (1, f"{STAGE}/checkpoint.shards/0")
    store.released.set()  # the write ends after the phase gave up on it: nothing names it
    assert given_up.landed.wait(timeout=60)
    assert _named(store) == (1, f"{STAGE}/checkpoint.shards/0")


def test_a_resumed_phase_spares_the_shards_of_both_its_checkpoints(phase) -> None:
    ctx, store = phase
    model, optimizer = ctx.shards.model, ctx.shards.optimizer
    for step in (1, 2, 3):  # slots 0, 1, 2: checkpoint.pt names 2, the previous one 1
        ctx.save("checkpoint.pt", _state(model, optimizer, step))
    ctx.flush()
    slots = committed_slots(store, CKPT, _named(store)[1])
    assert slots == [f"{STAGE}/checkpoint.shards/2", f"{STAGE}/checkpoint.shards/1"]
    resumed = Shards(model, optimizer, slots=slots)
    assert resumed.next_slot(CKPT) == f"{STAGE}/checkpoint.shards/0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_rank_group() -> Iterator[None]:
    """A real gloo process group of this process alone (FSDP2 needs one to shard over)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fsdp_refuses_a_checkpoint_written_by_one_rank(
    tiny_cell: Any, tmp_path: Path, one_rank_group: None
) -> None:
    from torch.distributed.fsdp import fully_shard

    model, optimizer = _model()
    one_rank = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 2}
    sharded, _ = _model()
    fully_shard(sharded)
    ctx = TrialContext(
        cell=tiny_cell(),
        store=ResultStore(str(tmp_path)),
        stage_id="s0",
        stage_dir=STAGE,
        device=torch.device("cpu"),
        world_size=2,  # the rank count the message names (the group here has one)
    )
    runner = PhaseRunner(ctx)
    refused = pytest.raises(
        CellError,
        match=r"^stage s0: its checkpoint was written by one rank; FSDP2 over 2 ranks cannot "
        r'load it \(rerun with resources.parallelism = "ddp" until the next checkpoint, or '
        r"start the stage afresh\)$",
    )
    with refused:
        runner._restore(one_rank, sharded, torch.optim.AdamW(sharded.parameters()), 2)


def test_synchronous_shards_are_named_at_once(phase) -> None:
    ctx, store = phase
    ctx.shards.asynchronous = False  # resources.async_checkpoint = false
    model, optimizer = ctx.shards.model, ctx.shards.optimizer
    ctx.save("checkpoint.pt", _state(model, optimizer, 1))
    assert ctx.shards.pending is None
    assert _named(store) == (1, f"{STAGE}/checkpoint.shards/0")
    assert _equal(_resumed(store), _weights(model))


def test_async_checkpoint_is_a_resource_per_model_outside_stage_identity(tiny_cell) -> None:
    import dataclasses

    from scaling.config.identity import manifest_digests, pretrain_id
    from scaling.config.parse import ConfigError, from_dict
    from scaling.config.schema import CellResources, ResourcesConfig

    resources = from_dict(
        ResourcesConfig,
        {"workers": 2, "models": {"swinv2-g": {"async_checkpoint": False}}},
        "resources",
    )
    assert resources.for_model("swinv2-nano").async_checkpoint
    assert not resources.for_model("swinv2-g").async_checkpoint
    with pytest.raises(
        ConfigError, match=r"^resources\.models\.swinv2-g\.async_checkpoint: expected bool, got 1$"
    ):
        from_dict(ResourcesConfig, {"models": {"swinv2-g": {"async_checkpoint": 1}}}, "resources")
    cell = tiny_cell()
    waiting = dataclasses.replace(cell, resources=CellResources(async_checkpoint=False))
    digests = manifest_digests(cell)
    assert pretrain_id(cell, digests) == pretrain_id(waiting, digests)  # switching reruns nothing
