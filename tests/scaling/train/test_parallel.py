"""DDP and FSDP2 over 2 CPU ranks (gloo), with and without activation checkpointing, give
the losses of one process on the whole batch; every rank draws its own drop-path masks.

Tolerance: 1e-5 relative. Two ranks average their halves' gradients where one process
averages the whole batch's, so float32 sums run in another order (measured: 1.3e-7
after four AdamW steps); DDP and FSDP2 agree with each other bit for bit here.
"""

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
from scaling.train.parallel import rank_seed, seed_rank, sharded, wrap

STEPS, BATCH = 3, 8
CONFIGS = [("ddp", "none"), ("fsdp", "none"), ("fsdp", "block"), ("ddp", "stage")]


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch per step; every image has the same number of masked tokens, so the
    mean over ranks of per-rank masked means is the whole batch's masked mean."""
    g = torch.Generator().manual_seed(step)
    images = torch.randn(BATCH, 3, 64, 64, generator=g)
    masks = torch.stack([torch.randperm(256, generator=g) < 154 for _ in range(BATCH)])
    return images, masks.reshape(BATCH, 16, 16).to(torch.uint8)  # (B, 3, H, W), (B, h, w)


def _model(checkpointing: str = "none", drop_path: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_simmim(
        "swinv2-nano", img_size=64, drop_path_rate=drop_path, checkpointing=checkpointing
    )


def _train(model: torch.nn.Module, forward: torch.nn.Module, rank: int, world: int) -> list:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(STEPS):
        images, masks = _data(step)
        part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        loss = forward(images[part], masks[part])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)
    return losses


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results: dict = {}
    for parallelism, checkpointing in CONFIGS:
        model = _model(checkpointing)
        units = get_spec("swinv2-nano").family_record.blocks(model.encoder)
        wrapped = wrap(model, parallelism, units)
        assert sharded(wrapped) == (parallelism == "fsdp")
        results[parallelism, checkpointing] = _train(model, wrapped, rank, world)
    model = _model(drop_path=0.5)  # the same images on both ranks: only drop path differs
    with torch.no_grad():  # SwinV2's post-norms start at zero, hiding drop path from the loss
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    seed_rank(0, rank)
    images, masks = _data(0)
    results["drop_path", rank] = model(images, masks).item()
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("ranks")
    mp.start_processes(_worker, (2, _free_port(), str(out)), nprocs=2, start_method="spawn")
    return {r: torch.load(out / f"rank{r}.pt") for r in (0, 1)}


@pytest.mark.slow
@pytest.mark.parametrize(("parallelism", "checkpointing"), CONFIGS)
def test_two_ranks_give_the_losses_of_one_process(
    two_ranks: dict, parallelism: str, checkpointing: str
) -> None:
    model = _model()
    plain = _train_single(model)
    got = two_ranks[0][parallelism, checkpointing]
    assert got == pytest.approx(plain, rel=1e-5)
    assert got == two_ranks[1][parallelism, checkpointing]


@pytest.mark.slow
def test_ranks_draw_their_own_drop_path(two_ranks: dict) -> None:
    assert two_ranks[0]["drop_path", 0] != two_ranks[1]["drop_path", 1]


def _train_single(model: torch.nn.Module) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(STEPS):
        loss = model(*_data(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_rank_seeds() -> None:
    assert rank_seed(7, 0) == 7  # one rank: the cell's own stream
    seeds = {rank_seed(7, r) for r in range(64)}
    assert len(seeds) == 64 and all(0 <= s < 2**63 for s in seeds)
    assert rank_seed(7, 3) == rank_seed(7, 3) != rank_seed(8, 3)


def test_unknown_parallelism_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"resources.parallelism: unknown 'zero3'; valid: ddp"):
        wrap(torch.nn.Linear(2, 2), "zero3", [])
