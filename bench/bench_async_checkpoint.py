"""Bench: how long a multi-rank checkpoint stops training, synchronous vs asynchronous.

Two CPU ranks (gloo, one process each), a SwinV2 SimMIM model wrapped as a cell wraps
it (FSDP2 or DDP) with AdamW state after one step, saved through
:func:`scaling.train.shards.save_shards` into a local results store:

* ``sync``: the call writes every rank's DCP shard before it returns (training waits
  for the whole write);
* ``async``: the call copies the state to host memory and returns; the write goes on in
  DCP's thread on a gloo group of its own (``resources.async_checkpoint``, the default).
  The blocking time is what training loses; the write's own time is printed beside it.

Side by side in one run, same model, same store, best of ``--repeat``:

    .venv/bin/python bench/bench_async_checkpoint.py [--model swinv2-s] [--parallelism fsdp]
        [--repeat 3] [--image-size 192]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _setup(
    model_name: str, parallelism: str, image: int
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from scaling.model.simmim import build_simmim
    from scaling.model.sizes import get_spec
    from scaling.train.parallel import wrap

    torch.manual_seed(0)
    model = build_simmim(model_name, img_size=image)
    units = get_spec(model_name).family_record.blocks(model.encoder)
    wrapped = wrap(model, parallelism, units)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, masks = (
        torch.randn(2, 3, image, image),
        torch.ones(2, image // 4, image // 4, dtype=torch.uint8),
    )
    wrapped(images, masks).backward()  # AdamW state exists, as after any step
    optimizer.step()
    return wrapped, optimizer


def _worker(rank: int, args: argparse.Namespace, port: int, root: str, out: str) -> None:
    from scaling.study.store import ResultStore
    from scaling.train.shards import background_group, save_shards

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    store, group = ResultStore(root), background_group()
    model, optimizer = _setup(args.model, args.parallelism, args.image_size)
    rows = []
    for i in range(args.repeat):
        for mode in ("sync", "async"):
            dist.barrier()
            start = time.perf_counter()
            pending = save_shards(
                store, f"{mode}/{i}", model, optimizer, rank=rank,
                asynchronous=mode == "async", group=group if mode == "async" else None,
            )  # fmt: skip
            blocked = time.perf_counter() - start
            pending.wait()
            dist.barrier()
            rows.append((mode, blocked, time.perf_counter() - start))
    if rank == 0:
        torch.save(rows, out)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="swinv2-s")
    parser.add_argument("--parallelism", default="fsdp", choices=("fsdp", "ddp"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=192, help="the paper's 192")
    args = parser.parse_args(argv)
    from scaling.model.build import count_params_m

    params = count_params_m(args.model, img_size=args.image_size)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print(f"{args.model} ({params:.0f}M parameters + AdamW), 2 CPU ranks, {args.parallelism}")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rows.pt")
        spawn_args = (args, _free_port(), str(Path(tmp) / "store"), out)
        mp.start_processes(_worker, spawn_args, nprocs=2, start_method="spawn")
        rows = torch.load(out)
        size = sum(f.stat().st_size for f in (Path(tmp) / "store" / "sync" / "0").iterdir())
    best = {m: min((r for r in rows if r[0] == m), key=lambda r: r[1]) for m in ("sync", "async")}
    print(f"checkpoint: {size / 2**20:,.0f} MiB (2 rank shards + metadata)")
    print(f"{'mode':<8}{'training blocked s':>20}{'write done s':>14}")
    for mode, (_, blocked, total) in best.items():
        print(f"{mode:<8}{blocked:>20.3f}{total:>14.3f}")
    ratio = best["sync"][1] / best["async"][1]
    print(f"training blocked: async {ratio:.1f}× shorter than sync")
    return 0


if __name__ == "__main__":
    sys.exit(main())
