"""Prefix sharing on the quickstart grid: pre-training steps and wall time with and without.

The quickstart study (2 tiny SwinV2 × 3 demo fractions × lengths 40 and 80) is run twice
with a multistep schedule and an absolute warm-up — the setting in which lengths share
their schedule up to the first decay — once with ``grid.share_prefix = true`` (an 80-step
trunk per (model, data) seeding the 40-step run at its fork step) and once without. The
script prints the pre-training steps each run trained (from ``pretrain.parquet``: a branch
trains from its fork step), the wall time of each ``mimscale run`` (fine-tuning included),
and whether the two produced the same cells to the last bit. Then ``plan --json`` of the
paper's study: its planned pre-training with and without sharing::

    python bench/bench_sharing.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SHARED = [
    "pretrain.schedule=multistep",
    "pretrain.warmup_fraction=0.0",
    "pretrain.warmup_steps=4",
    "pretrain.milestones=[0.75]",
]
COLUMNS = ("cell_id", "train_loss", "val_loss", "finetune_top1", "finetune_top5")


def run(out: Path, demo: Path, share: bool) -> tuple[float, int, list[tuple]]:
    sets = [*SHARED, f"grid.share_prefix={'true' if share else 'false'}", f"output_dir={out}"]
    sets += [f"data.root={demo}", f"data.manifest_dir={demo / 'manifests'}"]
    cmd = [sys.executable, "-m", "scaling", "run", "studies/quickstart.toml", "--no-report"]
    cmd += [a for s in sets for a in ("--set", s)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    stages = pq.read_table(out / "pretrain.parquet").to_pylist()
    steps = sum(s["iterations"] - (s["fork_step"] or 0) for s in stages)
    cells = pq.read_table(out / "cells.parquet").to_pylist()
    return wall, steps, sorted(tuple(c[k] for k in COLUMNS) for c in cells)


def main() -> None:
    sys.path.insert(0, str(REPO))
    from subsets.demo import build_demo

    with tempfile.TemporaryDirectory() as tmp:
        demo = build_demo(Path(tmp) / "demo")
        shared = run(Path(tmp) / "shared", demo, True)
        alone = run(Path(tmp) / "alone", demo, False)
    print(f"{'':<22} {'pre-training steps':>19} {'wall s':>8}")
    print(f"{'share_prefix = false':<22} {alone[1]:>19,} {alone[0]:>8.1f}")
    print(f"{'share_prefix = true':<22} {shared[1]:>19,} {shared[0]:>8.1f}")
    print(
        f"ratio shared/alone: steps {shared[1] / alone[1]:.3f}×, wall {shared[0] / alone[0]:.3f}×"
    )
    print(f"identical cells (ids, losses, top-1/5, bit for bit): {shared[2] == alone[2]}")
    plan = subprocess.run(
        [sys.executable, "-m", "scaling", "plan", "studies/paper.toml", "--json"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    total = json.loads(plan.stdout)["sharing"]["total"]
    print(
        "paper grid (plan --json): pre-training iterations "
        f"{total['iterations']:,.0f} → {total['shared_iterations']:,.0f} ({total['ratio']:.3f}×), "
        f"GPU-hours {total['gpu_hours']:,.0f} → {total['shared_gpu_hours']:,.0f}"
    )


if __name__ == "__main__":
    main()
