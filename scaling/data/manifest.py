"""The image list of a manifest, bad-image accounting, and the loader wrapper that enforces it.

:func:`read_manifest` reads only the columns the data pipeline needs (``path``,
``label``, ``key``) plus the ``mimscale`` JSON metadata (class list, name). Paths
stay in an Arrow string array rather than a Python list, so forked DataLoader
workers share them instead of copying them page by page as refcounts change.

Bad images: a dataset that cannot read or decode an image logs nothing itself; it
substitutes the next index (deterministically) and reports ``(index, path,
reason)`` in the batch. :class:`CheckedLoader` strips that report in the main
process, logs each bad image once, counts distinct bad images and raises
:class:`DataError` when they exceed ``max(BAD_IMAGE_FLOOR, max_bad_fraction · n)``.
Counting in the main process is exact whatever the number of workers.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from scaling.errors import UserError

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "label", "key")
METADATA_KEY = b"mimscale"
BAD_IMAGE_FLOOR = 5
"""Bad images always tolerated, however small the manifest."""
MAX_REPLACEMENTS = 32
"""Consecutive unreadable images after which a worker gives up (a wrong data root)."""

BadReport = list[tuple[int, str, str]]
"""(index, path, reason) of each image a batch had to replace."""
T = TypeVar("T")


class DataError(UserError):
    """Unreadable manifests, too many bad images, mismatched class lists."""


@dataclass(frozen=True)
class Manifest:
    """The rows of one manifest that the data pipeline uses."""

    source: Path
    paths: pa.StringArray
    labels: np.ndarray
    keys: np.ndarray
    classes: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.labels.max(initial=-1)) + 1

    def path(self, index: int) -> str:
        return self.paths[index].as_py()


def read_manifest(source: str | os.PathLike[str]) -> Manifest:
    """Read a manifest written by ``subsets``; errors name the file and what is wrong."""
    source = Path(source).absolute()
    try:
        schema = pq.read_schema(source)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{source}: cannot read manifest ({e})") from e
    missing = [c for c in MANIFEST_COLUMNS if c not in schema.names]
    if missing:
        raise DataError(f"{source}: manifest lacks columns {missing}; it has {schema.names}")
    table = pq.read_table(source, columns=list(MANIFEST_COLUMNS))
    raw = (schema.metadata or {}).get(METADATA_KEY)
    meta = json.loads(raw) if raw else {}
    paths = table.column("path").combine_chunks()
    if not len(paths):
        raise DataError(f"{source}: manifest has no rows")
    return Manifest(
        source=source,
        paths=paths,
        labels=table.column("label").to_numpy().astype(np.int64),
        keys=table.column("key").to_numpy().astype(np.uint64),
        classes=tuple(meta.get("classes", ())),
        meta=meta,
    )


def check_root(manifest: Manifest, root: str | os.PathLike[str]) -> None:
    """Fail early when none of the first few images exists under ``root``."""
    sample = [manifest.path(i) for i in range(min(8, len(manifest)))]
    if not any(os.path.exists(os.path.join(root, p)) for p in sample):
        raise DataError(
            f"{manifest.source}: none of its first {len(sample)} images exists under the data "
            f"root {root} (e.g. {os.path.join(root, sample[0])}); is the root right?"
        )


class Source(Protocol):
    """Where a dataset reads its images (:mod:`scaling.data.source`)."""

    manifest: Manifest

    def read(self, j: int) -> bytes | memoryview: ...

    def where(self, j: int) -> str: ...


def load_with_replacement(
    source: Source, index: int, load: Callable[[int, bytes | memoryview], T]
) -> tuple[T, BadReport]:
    """``load(index, encoded bytes)``; on any error (reading or decoding) try index + 1,
    + 2, … and report each failure."""
    manifest = source.manifest
    report: BadReport = []
    for attempt in range(MAX_REPLACEMENTS):
        j = (index + attempt) % len(manifest)
        try:
            return load(j, source.read(j)), report
        except Exception as e:  # PIL and the decoders raise many kinds; all mean "bad image"
            report.append((j, source.where(j), f"{type(e).__name__}: {e}"))
    raise DataError(
        f"{manifest.source}: {MAX_REPLACEMENTS} consecutive images are unreadable from index "
        f"{index}; first {report[0][1]}: {report[0][2]}"
    )


class BadImageCounter:
    """Distinct bad images of one manifest, with the threshold that stops the run."""

    def __init__(self, manifest: Manifest, max_bad_fraction: float) -> None:
        if not 0.0 <= max_bad_fraction < 1.0:
            raise ValueError(f"max_bad_fraction: must be in [0, 1), got {max_bad_fraction}")
        self.manifest = manifest
        self.allowed = max(BAD_IMAGE_FLOOR, math.floor(max_bad_fraction * len(manifest)))
        self.max_bad_fraction = max_bad_fraction
        self.bad: dict[int, str] = {}

    def update(self, report: BadReport) -> None:
        for index, path, reason in report:
            if index not in self.bad:
                self.bad[index] = path
                log.warning("unreadable image %s (%s); using another in its place", path, reason)
        if len(self.bad) > self.allowed:
            examples = ", ".join(list(self.bad.values())[:3])
            raise DataError(
                f"{self.manifest.source}: {len(self.bad)} of {len(self.manifest)} images are "
                f"unreadable, more than the {self.allowed} allowed (max_bad_fraction "
                f"{self.max_bad_fraction:g}, at least {BAD_IMAGE_FLOOR}); e.g. {examples}"
            )


class CheckedLoader:
    """Iterates a DataLoader of ``(x, y, bad_report)`` batches and yields ``(x, y)``.

    ``x, y`` are ``(images, masks)`` for pre-training and validation and ``(images,
    labels)`` for fine-tuning. The wrapped loader, its batch sampler and the bad-image
    counter stay reachable as attributes.
    """

    def __init__(self, loader: DataLoader, counter: BadImageCounter) -> None:
        self.loader = loader
        self.counter = counter

    @property
    def batch_sampler(self) -> Any:
        return self.loader.batch_sampler

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    @property
    def num_bad_images(self) -> int:
        return len(self.counter.bad)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for x, y, report in self.loader:
            if report:
                try:
                    self.counter.update(report)
                except DataError:
                    self.close()
                    raise
            yield x, y

    def close(self) -> None:
        """Stop the worker processes now (they persist between iterations otherwise)."""
        # DataLoader keeps its persistent iterator in a private attribute and offers no
        # public way to stop it; left alone, the workers outlive an error until exit.
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None


def collate(samples: Sequence[tuple[Any, Any, BadReport]]) -> tuple[Any, Any, BadReport]:
    """Stack images and targets; concatenate the bad-image reports."""
    images = torch.stack([s[0] for s in samples])
    targets = [s[1] for s in samples]
    y = torch.stack(targets) if isinstance(targets[0], torch.Tensor) else torch.tensor(targets)
    return images, y, [bad for s in samples for bad in s[2]]
