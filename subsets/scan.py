"""Scan an image-folder tree ``ROOT/<wnid>/<image>`` into a :class:`Listing`.

Class folders are found with ``os.scandir`` (folder or not comes from the directory
entry, no ``stat``) and listed in parallel by a thread pool with ``os.listdir``: names
only, no per-file ``stat`` and no per-file Python object beyond the name, the system
calls releasing the GIL. Everything after the listing is vectorised: the names are
joined into one byte buffer per tree, and the image test (.jpg/.jpeg/.png/.webp in any
case, not a dot-file) runs in numpy. Entries left out are counted by reason in
``Listing.skipped`` (only they pay for a closer look); a class folder without images is
left out of the class list with a warning (``Listing.empty_classes``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from subsets.errors import SubsetError
from subsets.listing import IMAGE_SUFFIXES, Listing
from subsets.packed import ByteStrings

logger = logging.getLogger(__name__)

DEFAULT_WORKERS = 8  # listing is I/O: threads hide network-storage latency
_SUFFIXES = tuple(s.encode() for s in IMAGE_SUFFIXES)
_BATCH = 16  # class folders per thread-pool task


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
    try:
        with os.scandir(root) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                (folders if entry.is_dir() else files).append(entry.name)
    except OSError as err:
        raise SubsetError(f"cannot read folder {root}: {err.strerror or err}") from None
    return sorted(folders), sorted(files)


def _progress(total: int, desc: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with the install
        return None
    # disable=None: draw only on a terminal, so logs and tests stay clean
    return tqdm(total=total, desc=desc, unit="class", file=sys.stderr, disable=None)


def _list_folder(folder: bytes) -> list[bytes]:
    try:
        return os.listdir(folder)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise SubsetError(f"cannot read class folder {os.fsdecode(folder)}: {reason}") from None


def _list_batch(folders: list[bytes]) -> list[list[bytes]]:
    return [_list_folder(folder) for folder in folders]


def _list_folders(root: Path, classes: list[str], workers: int) -> list[list[bytes]]:
    """The names (bytes: no decoding) in every class folder."""
    folders = [os.fsencode(os.path.join(root, c)) for c in classes]
    # Batches of folders per task: one future per folder costs more than listing it.
    batches = [folders[i : i + _BATCH] for i in range(0, len(folders), _BATCH)]
    bar = _progress(len(classes), f"scan {root.name}")
    names: list[list[bytes]] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for listed in pool.map(_list_batch, batches):
            names.extend(listed)
            if bar is not None:
                bar.update(len(listed))
    if bar is not None:
        bar.close()
    return names


def _joined(root: Path, heads: list[bytes], names: list[list[bytes]]) -> ByteStrings:
    """Every ``head + name`` in one newline-separated byte buffer."""
    data = b"".join(h + (b"\n" + h).join(n) + b"\n" for h, n in zip(heads, names, strict=True) if n)
    buf = np.zeros(len(data) + 8, dtype=np.uint8)
    buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    if len(data) and buf.max() >= 0x80:  # not pure ASCII: check the UTF-8
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            start, end = data.rfind(b"\n", 0, err.start) + 1, data.find(b"\n", err.end)
            bad = data[start:end]
            raise SubsetError(f"{root}: a file name is not valid UTF-8: {bad!r}") from None
    ends = np.flatnonzero(buf[: len(data)] == ord("\n"))
    if len(ends) != sum(len(n) for n in names):
        raise SubsetError(f"{root}: a file name holds a newline")
    starts = np.concatenate([[0], ends[:-1] + 1]) if len(ends) else ends
    return ByteStrings(buf, starts, ends - starts)


def _skip_reason(root: Path, path: str, prefix: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if name.startswith("."):
        return "hidden files"
    if os.path.isdir(root / path[len(prefix) :]):  # only skipped entries pay a stat
        return "sub-folders"
    suffix = os.path.splitext(name)[1].lower()
    return f"{suffix} files" if suffix else "files without a suffix"


def scan_tree(
    root: str | Path, prefix: str = "", workers: int = DEFAULT_WORKERS, what: str = "root"
) -> Listing:
    """Scan ``root/<wnid>/<image>``; paths become ``prefix + wnid/image``."""
    root = check_root(Path(root), what)
    classes, top_files = top_level(root)
    if not classes:
        found = f"; it holds {len(top_files)} files but no folders" if top_files else " (empty)"
        raise SubsetError(f"{what} {root}: no class folders <wnid>/<image>{found}")
    names = _list_folders(root, classes, workers)
    heads = [os.fsencode(f"{prefix}{c}/") for c in classes]
    paths = _joined(root, heads, names)
    counts = np.array([len(n) for n in names], dtype=np.int64)
    codes = np.repeat(np.arange(len(classes), dtype=np.int32), counts)
    # An image: an image suffix, and a name that does not start with a dot.
    name_starts = paths.starts + np.repeat([len(h) for h in heads], counts)
    dotted = paths.buf[np.minimum(name_starts, len(paths.buf) - 1)] == ord(".")
    images = paths.ends_with_any(_SUFFIXES) & ~dotted
    skipped: Counter[str] = Counter()
    if top_files:
        skipped["files outside class folders"] = len(top_files)
    skipped.update(_skip_reason(root, paths[int(i)], prefix) for i in np.flatnonzero(~images))
    kept = np.bincount(codes[images], minlength=len(classes))
    empty = tuple(c for c, k in zip(classes, kept, strict=True) if not k)
    if empty:
        shown = ", ".join(empty[:10]) + (" …" if len(empty) > 10 else "")
        logger.warning(
            "%s: %d class folders hold no images and are left out: %s", root, len(empty), shown
        )
    if len(empty) == len(classes):
        raise SubsetError(f"{what} {root}: its {len(classes)} class folders hold no images")
    # Renumber the classes that kept images: 0..n-1 in class order.
    lut = np.cumsum(kept > 0, dtype=np.int32) - 1
    if skipped:
        logger.info("%s: skipped %s", root, format_skipped(skipped))
    logger.info("scanned %d images in %d classes under %s", images.sum(), (kept > 0).sum(), root)
    return Listing(
        paths=paths.take(images),
        codes=lut[codes[images]],
        wnids=[c for c, k in zip(classes, kept, strict=True) if k],
        origin=root,
        kind="tree",
        skipped=dict(skipped),
        empty_classes=empty,
    )


def format_skipped(skipped: dict[str, int]) -> str:
    """``'3 .txt files, 1 sub-folders'``: a one-line summary of skipped entries."""
    return ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
