"""Bench: scanning an image-folder tree, side by side with torchvision's ImageFolder.

A tree of 200,000 empty .JPEG files in 1,000 class folders (created once under
$MIMSCALE_BENCH_CACHE, default /tmp/mimscale-bench, not timed) is indexed alternately by
``subsets.scan.scan_tree`` and ``torchvision.datasets.ImageFolder`` (its constructor
lists the tree and builds the sample list; no image is opened). Target: ≥ 3× the
images/s of ImageFolder. Both read a warm page cache (one untimed pass each first).

    .venv/bin/python bench/bench_subsets_scan.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_subsets_common import CACHE, empty_tree

from subsets.scan import scan_tree


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    count = fn()
    return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from torchvision.datasets import ImageFolder

    root = empty_tree(CACHE / "tree-200k")
    ours = lambda: len(scan_tree(root).paths)  # noqa: E731
    theirs = lambda: len(ImageFolder(str(root)).samples)  # noqa: E731
    assert ours() == theirs() == 200_000  # also warms the page cache
    times: dict[str, list[float]] = {"scan_tree": [], "ImageFolder": []}
    for _ in range(args.rounds):  # alternate, so both see the same machine load
        times["scan_tree"].append(timed(ours)[0])
        times["ImageFolder"].append(timed(theirs)[0])
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"tree: {root} (200,000 files in 1,000 class folders), {args.rounds} rounds")
    rates = {}
    for name, runs in times.items():
        best, median = min(runs), statistics.median(runs)
        rates[name] = 200_000 / median
        print(
            f"  {name:12s} best {best * 1e3:7.0f} ms  median {median * 1e3:7.0f} ms  "
            f"= {200_000 / median:>12,.0f} images/s (median)"
        )
    ratio = rates["scan_tree"] / rates["ImageFolder"]
    best_ratio = min(times["ImageFolder"]) / min(times["scan_tree"])
    print(
        f"scan_tree / ImageFolder: {ratio:.1f}x images/s (median; best vs best {best_ratio:.1f}x)"
        f" -> {'OK' if ratio >= 3 else 'MISSED'} (target ≥ 3x)"
    )


if __name__ == "__main__":
    main()
