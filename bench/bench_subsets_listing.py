"""Bench: listing files → manifests at ImageNet scale, through the CLI, as a user runs it.

(a) a synthetic IN-22K listing (21,841 classes, 14,197,122 paths) → in22k + in22k-val;
    targets ≤ 60 s wall and ≤ 4 GiB peak RSS on a 2-core machine.
(b) a synthetic IN-1K listing (1,281,167 train + 50,000 val paths) → in1k-{10,20,50,100}pct
    + in1k-val; target ≤ 5 s.

The listings are generated once under $MIMSCALE_BENCH_CACHE (default /tmp/mimscale-bench)
and not timed. Each build runs in a fresh process (``python -m scaling subsets build``);
wall time, CPU time and peak RSS come from that process alone (os.wait4).

    .venv/bin/python bench/bench_subsets_listing.py [--only in1k|in22k] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_subsets_common import CACHE, in1k_listings, in22k_listing

ROOT = Path(__file__).resolve().parents[1]


def run_build(args: list[str], out: Path) -> dict[str, float]:
    """Run one CLI build into a fresh ``out``; wall/CPU seconds and peak RSS of that process."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "scaling", "subsets", "build", *args, "--out", str(out)]
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    output = child.stdout.read().decode()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"build failed ({child.returncode}):\n{output}")
    table = [line for line in output.splitlines() if "INFO" not in line]
    print("\n".join("    " + line for line in table))
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gib": usage.ru_maxrss * 1024 / 2**30,
    }


def report(name: str, runs: list[dict[str, float]], target_s: float, rss_gib: float) -> None:
    best = min(runs, key=lambda r: r["wall_s"])
    walls = ", ".join(f"{r['wall_s']:.1f}" for r in runs)
    ok = best["wall_s"] <= target_s and best["peak_rss_gib"] <= rss_gib
    print(
        f"{name}: wall {best['wall_s']:.1f} s (runs: {walls}; target ≤ {target_s:g} s), "
        f"CPU {best['cpu_s']:.1f} s, peak RSS {best['peak_rss_gib']:.2f} GiB "
        f"(target ≤ {rss_gib:g} GiB) -> {'OK' if ok else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["in1k", "in22k"])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    if args.only != "in22k":
        train, val = in1k_listings()
        cmd = ["--listing", str(train), "--val-listing", str(val)]
        print(f"(b) IN-1K: {train} + {val}")
        runs = [run_build(cmd, CACHE / "out-in1k") for _ in range(args.repeat)]
        report("(b) IN-1K listing -> in1k-* (5 manifests)", runs, 5, 4)
    if args.only != "in1k":
        listing = in22k_listing()
        cmd = ["--listing", str(listing), "--source-kind", "in22k"]
        print(f"(a) IN-22K: {listing} ({listing.stat().st_size / 1e6:.0f} MB)")
        runs = [run_build(cmd, CACHE / "out-in22k") for _ in range(args.repeat)]
        report("(a) IN-22K listing -> in22k + in22k-val", runs, 60, 4)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
