"""Scan an image-folder tree ``ROOT/<wnid>/<image>`` into a :class:`Listing`.

Class folders are listed in parallel (a thread pool; ``os.scandir`` releases the GIL in
its system calls) with no per-file ``stat``: an entry is an image when its name ends in
.jpg/.jpeg/.png/.webp (any case) and does not start with a dot. Everything else is
counted by reason in ``Listing.skipped``; a class folder without images is left out of
the class list with a warning (``Listing.empty_classes``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from subsets.errors import SubsetError
from subsets.listing import IMAGE_SUFFIXES, Listing
from subsets.packed import byte_strings

logger = logging.getLogger(__name__)

DEFAULT_WORKERS = 16  # I/O bound: more threads than cores hide file-system latency


def _skip_reason(folder: str, name: str) -> str:
    if name.startswith("."):
        return "hidden files"
    if os.path.isdir(os.path.join(folder, name)):  # only skipped entries pay a stat
        return "sub-folders"
    suffix = os.path.splitext(name)[1].lower()
    return f"{suffix} files" if suffix else "files without a suffix"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def scan_class(folder: str) -> tuple[list[str], Counter[str]]:
    """Image names in one folder (sorted) and the other entries counted by reason."""
    with os.scandir(folder) as it:
        names = [entry.name for entry in it]
    images = [n for n in names if _is_image(n)]
    skipped: Counter[str] = Counter()
    if len(images) != len(names):
        skipped.update(_skip_reason(folder, n) for n in names if not _is_image(n))
    images.sort()
    return images, skipped


def check_root(root: Path, what: str) -> Path:
    """``root`` as an absolute path if it is an existing folder, else SubsetError."""
    if not root.exists():
        raise SubsetError(f"{what} {root}: no such folder")
    if not root.is_dir():
        raise SubsetError(f"{what} {root}: not a folder")
    return root.absolute()


def top_level(root: Path) -> tuple[list[str], list[str]]:
    """Sorted names of the folders and of the other entries directly under ``root``."""
    folders, files = [], []
    with os.scandir(root) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            (folders if entry.is_dir() else files).append(entry.name)
    return sorted(folders), sorted(files)


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with the install
        return None
    # disable=None: draw only on a terminal, so logs and tests stay clean
    return tqdm(total=total, desc=desc, unit="class", file=sys.stderr, disable=None)


def scan_tree(
    root: str | Path, prefix: str = "", workers: int = DEFAULT_WORKERS, what: str = "root"
) -> Listing:
    """Scan ``root/<wnid>/<image>``; paths become ``prefix + wnid/image``."""
    root = check_root(Path(root), what)
    classes, top_files = top_level(root)
    if not classes:
        found = f"; it holds {len(top_files)} files but no folders" if top_files else " (empty)"
        raise SubsetError(f"{what} {root}: no class folders <wnid>/<image>{found}")
    skipped: Counter[str] = Counter()
    if top_files:
        skipped["files outside class folders"] = len(top_files)
    per_class: list[list[str]] = []
    bar = _progress(len(classes), f"scan {root.name}")
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for images, class_skipped in pool.map(scan_class, [str(root / c) for c in classes]):
            per_class.append(images)
            skipped.update(class_skipped)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    empty = tuple(c for c, images in zip(classes, per_class, strict=True) if not images)
    if empty:
        shown = ", ".join(empty[:10]) + (" …" if len(empty) > 10 else "")
        logger.warning(
            "%s: %d class folders hold no images and are left out: %s", root, len(empty), shown
        )
    kept = [(c, images) for c, images in zip(classes, per_class, strict=True) if images]
    if not kept:
        raise SubsetError(f"{what} {root}: its {len(classes)} class folders hold no images")
    paths = [f"{prefix}{c}/{name}" for c, images in kept for name in images]
    counts = np.array([len(images) for _, images in kept], dtype=np.int64)
    if skipped:
        logger.info("%s: skipped %s", root, format_skipped(skipped))
    logger.info("scanned %d images in %d classes under %s", len(paths), len(kept), root)
    return Listing(
        paths=byte_strings(paths),
        codes=np.repeat(np.arange(len(kept), dtype=np.int32), counts),
        wnids=[c for c, _ in kept],
        origin=root,
        kind="tree",
        skipped=dict(skipped),
        empty_classes=empty,
    )


def format_skipped(skipped: dict[str, int]) -> str:
    """``'3 .txt files, 1 sub-folders'``: a one-line summary of skipped entries."""
    return ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
