"""Synthetic ImageNet-scale listings and trees for the subset benches (cached under /tmp).

Not a bench itself: ``bench_subsets_listing.py`` and ``bench_subsets_scan.py`` import it.
Generation is slow (tens of seconds for 14.2M lines) and is never part of a timing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("MIMSCALE_BENCH_CACHE", "/tmp/mimscale-bench"))


def _wnids(rng: np.random.Generator, n: int) -> list[str]:
    numbers = rng.choice(np.arange(1_000_000, 15_000_000), size=n, replace=False)
    return [f"n{x:08d}" for x in np.sort(numbers)]


def _class_sizes(rng: np.random.Generator, n_classes: int, total: int, lo: int, hi: int):
    """Class sizes in [lo, hi] that sum to exactly ``total``."""
    sizes = np.clip(rng.lognormal(0.0, 0.6, n_classes), 0, None)
    sizes = np.clip(np.round(sizes / sizes.sum() * total), lo, hi).astype(np.int64)
    while (diff := total - int(sizes.sum())) != 0:
        room = (sizes < hi) if diff > 0 else (sizes > lo)
        idx = rng.choice(np.flatnonzero(room), size=min(abs(diff), int(room.sum())), replace=False)
        sizes[idx] += 1 if diff > 0 else -1
    return sizes


def write_listing(path: Path, n_classes: int, total: int, lo: int, hi: int, seed: int) -> Path:
    """A shuffled 'wnid/wnid_id.JPEG wnid' listing, written once and reused."""
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    wnids = _wnids(rng, n_classes)
    sizes = _class_sizes(rng, n_classes, total, lo, hi)
    labels = np.repeat(np.arange(n_classes), sizes)
    gaps = rng.integers(1, 12, size=total)
    ids = np.cumsum(gaps)
    starts = np.cumsum(sizes) - sizes
    ids -= np.repeat(ids[starts] - gaps[starts], sizes)  # restart the ids in every class
    ids += np.repeat(rng.integers(1, 5000, size=n_classes), sizes)
    order = rng.permutation(total)
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w") as fh:
        for lo_i in range(0, total, 1_000_000):
            rows = order[lo_i : lo_i + 1_000_000]
            fh.write(
                "".join(
                    f"{wnids[c]}/{wnids[c]}_{i}.JPEG {wnids[c]}\n"
                    for c, i in zip(labels[rows].tolist(), ids[rows].tolist(), strict=True)
                )
            )
    os.replace(tmp, path)
    return path


def in22k_listing() -> Path:
    """21,841 classes, 14,197,122 paths (the fall11 release), sizes 1..3,000."""
    return write_listing(CACHE / "in22k.txt", 21_841, 14_197_122, 1, 3_000, seed=22)


def in1k_listings() -> tuple[Path, Path]:
    """IN-1K train (1,281,167 paths, 732..1,300 per class) and val (50,000) listings."""
    train = write_listing(CACHE / "in1k_train.txt", 1_000, 1_281_167, 732, 1_300, seed=1)
    val = CACHE / "in1k_val.txt"
    if not val.is_file():
        with open(train) as fh:
            wnids = sorted({line.split(" ")[1].strip() for line in fh})
        lines = [f"val/ILSVRC2012_val_{i + 1:08d}.JPEG {wnids[i % 1000]}\n" for i in range(50_000)]
        val.write_text("".join(lines))
    return train, val


def empty_tree(root: Path, n_classes: int = 1_000, per_class: int = 200) -> Path:
    """``root/<wnid>/<wnid>_<i>.JPEG``: empty files, created once."""
    marker = root / ".complete"
    if marker.is_file():
        return root
    rng = np.random.default_rng(3)
    for wnid in _wnids(rng, n_classes):
        folder = root / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (folder / f"{wnid}_{i}.JPEG").touch()
    marker.touch()
    return root
