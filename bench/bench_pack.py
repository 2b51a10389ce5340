"""Bench: ``mimscale subsets pack`` on a synthetic 50k-image set: images/s and peak RSS.

The set (100 classes × 500 small JPEGs, 64–160 px, encoded with simplejpeg) is written
once under $MIMSCALE_BENCH_CACHE/jpeg50k (default /tmp/mimscale-bench) with its
manifests (folder-{10,50,100}pct); neither is timed. The pack runs in a fresh process
through the CLI, as a user runs it; wall time, CPU time and peak RSS come from that
process alone (os.wait4). Baseline in the same run: reading the same files with the
same number of threads and nothing else (the I/O floor of packing). The files were just
written or read, so both run from the page cache: the figure is packing's CPU cost.

    .venv/bin/python bench/bench_pack.py [--images 50000] [--shard-size 128M] [--block-size 16M]
        [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_subsets_common import CACHE

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 100


def _smooth(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.integers(0, 256, (size // 16 + 2, size // 16 + 2, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1).astype(np.float32)
    kernel = np.ones(9, np.float32) / 9  # a box blur in each direction: photo-like
    for axis in (0, 1):
        big = np.apply_along_axis(lambda v: np.convolve(v, kernel, "same"), axis, big)
    return big.astype(np.uint8)


def make_set(folder: Path, images: int) -> Path:
    """``folder/train/<wnid>/<wnid>_<i>.JPEG``, written once (a marker file says done)."""
    import simplejpeg

    marker = folder / f".complete-{images}"
    if marker.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    canvases = [_smooth(rng, 512) for _ in range(16)]
    for i in range(images):
        wnid = f"n{10_000_000 + i % CLASSES:08d}"
        size = int(rng.integers(64, 161))
        canvas = canvases[i % len(canvases)]
        y, x = rng.integers(0, 512 - size, 2)
        crop = np.ascontiguousarray(canvas[y : y + size, x : x + size])
        path = folder / "train" / wnid / f"{wnid}_{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(simplejpeg.encode_jpeg(crop, quality=85))
    manifests = folder / "manifests"
    command = [sys.executable, "-m", "scaling", "subsets", "build", "--train",
               str(folder / "train"), "--source-kind", "folder", "--fraction", "0.1,0.5,1",
               "--out", str(manifests)]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    marker.touch()
    return folder


def read_all(folder: Path, workers: int) -> tuple[float, int]:
    """Seconds to read every image with ``workers`` threads, and the bytes read."""
    paths = sorted((folder / "train").glob("*/*.JPEG"))

    def read(path: Path) -> int:
        with open(path, "rb") as fh:
            return len(fh.read())

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(read, paths, chunksize=256))
    return time.perf_counter() - start, total


def run_pack(folder: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    manifests = sorted(str(p) for p in (folder / "manifests").glob("*.parquet"))
    command = [sys.executable, "-m", "scaling", "subsets", "pack", *manifests, "--root",
               str(folder), "--out", str(out), "--shard-size", args.shard_size,
               "--block-size", args.block_size, "--workers", str(args.workers)]  # fmt: skip
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    output = child.stdout.read().decode()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"pack failed:\n{output}")
    print("\n".join("    " + line for line in output.splitlines()[-4:]))
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gib": usage.ru_maxrss * 1024 / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--shard-size", default="128M")
    parser.add_argument("--block-size", default="16M")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    folder = make_set(CACHE / "jpeg50k", args.images)
    floor_s, total = read_all(folder, args.workers)
    print(f"set: {args.images:,} JPEGs, {total / 2**20:,.0f} MiB in {folder}")
    runs = [run_pack(folder, CACHE / "pack50k", args) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r["wall_s"])
    print(
        f"pack: {args.images / best['wall_s']:,.0f} images/s ({total / 2**20 / best['wall_s']:,.0f}"
        f" MiB/s), wall {best['wall_s']:.1f} s (CPU {best['cpu_s']:.1f} s, process start and "
        f"manifest reads included), peak RSS {best['peak_rss_gib'] * 1024:,.0f} MiB"
    )
    print(
        f"baseline, reading the same files only ({args.workers} threads): "
        f"{args.images / floor_s:,.0f} images/s, {floor_s:.1f} s"
    )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
