"""Sharded DCP checkpoints through the results store: 2 CPU ranks (gloo) under FSDP2 and
DDP with drop path crash after step k, resume from their shards and continue exactly as
the uninterrupted run (bit for bit); one rank reads a 2-rank checkpoint resharded."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scaling.model.simmim import build_simmim
from scaling.model.sizes import get_spec
from scaling.study.store import ResultStore
from scaling.train.parallel import seed_rank, wrap
from scaling.train.shards import gather_full, load_shards, save_shards, saved_ranks

STEPS, CRASH, BATCH = 4, 2, 4


def _data(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    masks = torch.stack([torch.randperm(256, generator=g) < 154 for _ in range(BATCH)])
    images = torch.randn(BATCH, 3, 64, 64, generator=g)
    return images, masks.reshape(BATCH, 16, 16).to(torch.uint8)


def _setup(parallelism: str, rank: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model and optimizer of one rank; ``parallelism`` '' runs in one process."""
    torch.manual_seed(0)
    model = build_simmim("swinv2-nano", img_size=64, drop_path_rate=0.3)
    with torch.no_grad():  # SwinV2's post-norms start at zero, hiding drop path
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    seed_rank(0, rank)
    units = get_spec("swinv2-nano").family_record.blocks(model.encoder)
    wrapped = wrap(model, parallelism, units) if parallelism else model
    return wrapped, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, rank: int):
    loss = model(*_data(step, rank))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _worker(rank: int, world: int, port: int, root: str, parallelism: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    store = ResultStore(root)
    background = dist.new_group(backend="gloo")  # the async writes' own group
    model, optimizer = _setup(parallelism, rank)
    losses, pending = [], None
    for step in range(STEPS):
        losses.append(_step(model, optimizer, step, rank))
        if step + 1 == CRASH:
            pending = save_shards(
                store, "ckpt", model, optimizer, rank=rank, asynchronous=True, group=background
            )
    pending.wait()
    dist.barrier()
    model, optimizer = _setup(parallelism, rank)  # a fresh process's state
    restored = load_shards(store, "ckpt", model, optimizer, rank=rank, world_size=world)
    resumed = [_step(model, optimizer, step, rank) for step in range(CRASH, STEPS)]
    full = gather_full({"encoder": model.state_dict(), "step": [STEPS]})  # the final encoder
    shapes = {k: tuple(v.shape) for k, v in full["encoder"].items()}
    torch.save(
        {"losses": losses, "resumed": resumed, "restored": restored, "shapes": shapes},
        Path(root) / f"{parallelism}-rank{rank}.pt",
    )
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path: Path, parallelism: str) -> dict[int, dict]:
    root = tmp_path / parallelism
    root.mkdir()
    args = (2, _free_port(), str(root), parallelism)
    mp.start_processes(_worker, args, nprocs=2, start_method="spawn")
    return {r: torch.load(root / f"{parallelism}-rank{r}.pt") for r in (0, 1)}


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["fsdp", "ddp"])
def test_two_ranks_resume_bit_exactly(tmp_path: Path, parallelism: str) -> None:
    runs = _run(tmp_path, parallelism)
    for rank, run in runs.items():
        assert run["restored"], rank
        assert run["resumed"] == run["losses"][CRASH:], rank  # every rank, bit for bit
    assert runs[0]["losses"] != runs[1]["losses"]  # ranks saw different data and masks
    store = ResultStore(str(tmp_path / parallelism))
    assert saved_ranks(store, "ckpt") == 2
    files = sorted(p.name for p in (tmp_path / parallelism / "ckpt").iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one shard per rank

    # one process reads the 2-rank checkpoint: weights resharded, no RNG streams of its own
    model, optimizer = _setup("", 0)
    whole = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    prefix = "module." if parallelism == "ddp" else ""
    assert {k.removeprefix(prefix): v for k, v in runs[0]["shapes"].items()} == whole
    before = {k: v.clone() for k, v in model.state_dict().items()}
    restored = load_shards(store, "ckpt", model, optimizer, rank=0, world_size=1)
    assert not restored
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "mask_token" in changed and len(changed) > 10
    assert len(optimizer.state) == len(list(model.parameters()))  # AdamW moments loaded


def test_a_missing_checkpoint_file_names_its_path(tmp_path: Path) -> None:
    from scaling.train.shards import StoreFileSystem

    fs = StoreFileSystem(ResultStore(str(tmp_path)))
    missing = pytest.raises(FileNotFoundError, match=r"ckpt/.metadata: no such checkpoint file")
    with missing, fs.create_stream("ckpt/.metadata", "rb"):
        pass


@pytest.fixture
def s3_store(s3_server) -> ResultStore:
    """A results store in an empty bucket on a local S3 server (moto)."""
    return ResultStore(f"{s3_server.bucket('shards')}/study")


@pytest.mark.slow
def test_shards_in_object_storage_asynchronously(s3_store: ResultStore) -> None:
    import boto3

    model, optimizer = _setup("", 0)
    _step(model, optimizer, 0, 0)
    pending = save_shards(s3_store, "stages/x/ckpt", model, optimizer, rank=0, asynchronous=True)
    pending.wait()
    keys = boto3.client("s3").list_objects_v2(Bucket="shards")["Contents"]
    assert sorted(k["Key"] for k in keys if not k["Key"].endswith("/")) == [
        "study/stages/x/ckpt/.metadata",
        "study/stages/x/ckpt/__0_0.distcp",
    ]
    expected = _step(model, optimizer, 1, 0)
    model, optimizer = _setup("", 0)
    assert load_shards(s3_store, "stages/x/ckpt", model, optimizer, rank=0, world_size=1)
    assert _step(model, optimizer, 1, 0) == expected  # weights, AdamW and RNG: exact
