"""A source made ready for selection: rows sorted by (wnid, path), labels, keys, digest.

:func:`prepare_source` turns a :class:`~subsets.listing.Listing` (scan or listing-file
order, whatever it was) into a canonical :class:`PreparedSource`, so everything after it
is independent of the order the file system or the listing gave. It also rejects
duplicate paths and, for a val split, wnids that are not train classes.

The source digest (blake2b-128, hex) covers the class list, the labels and the keys of
the sorted rows: the same images under the same data root give the same digest on
every machine. Manifests record it to tell which source they were built from.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from subsets.errors import SubsetError
from subsets.keys import keys_of_words, rank_keys
from subsets.listing import Listing
from subsets.packed import PackedPaths, sort_within_groups
from subsets.select import class_counts, class_positions

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PreparedSource:
    """One input (train or val) of one source kind, sorted by (label, path)."""

    kind: str
    """Source kind: 'in1k', 'in22k', 'demo', 'folder'."""
    input: str
    """'train' or 'val': which input of the source this is."""
    classes: tuple[str, ...]
    """Sorted wnids; ``labels`` index into it."""
    paths: pa.ChunkedArray
    """Paths (strings) relative to the data root, sorted by (label, path)."""
    labels: np.ndarray
    """int32 label of every row (non-decreasing)."""
    keys: np.ndarray
    """uint64 key of every path (:func:`subsets.keys.path_key`)."""
    counts: np.ndarray
    """Images per class (int64)."""
    digest: str
    """Content digest of the source (see the module docstring)."""
    listing: Listing
    """Where the rows came from (origin, skipped entries, empty classes); its rows are
    dropped once prepared."""
    distinct_keys: bool = True
    """False if two different paths share a key (ranks then tie; broken by row order)."""
    _positions: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def positions(self, seed: int) -> np.ndarray:
        """Position of every row within its class in the order of ``seed``'s ranks."""
        if seed not in self._positions:
            ranks = rank_keys(self.keys, seed)
            self._positions[seed] = class_positions(
                self.labels, ranks, self.counts, distinct=self.distinct_keys
            )
        return self._positions[seed]


def _labels(listing: Listing, classes: tuple[str, ...] | None) -> tuple[np.ndarray, tuple]:
    """(label of every row, class list); a wnid missing from a given list is an error."""
    if classes is None:
        classes = tuple(sorted(listing.wnids))
    index = {w: i for i, w in enumerate(classes)}
    unknown = [i for i, w in enumerate(listing.wnids) if w not in index]
    if unknown:
        row = int(np.flatnonzero(np.isin(listing.codes, unknown))[0])
        names = sorted(listing.wnids[i] for i in unknown)
        shown = ", ".join(names[:5]) + (" …" if len(names) > 5 else "")
        raise SubsetError(
            f"{listing.where(row)}: wnid {listing.wnids[listing.codes[row]]} is unknown to "
            f"train ({len(names)} unknown wnids: {shown})"
        )
    lut = np.array([index[w] for w in listing.wnids], dtype=np.int32)
    return lut[listing.codes], classes


def _check_duplicates(listing: Listing, paths: PackedPaths, keys: np.ndarray, order) -> bool:
    """Raise on a duplicate path; return whether all keys are distinct."""
    ordered = np.sort(keys)
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    for i in same[:100]:
        rows = np.flatnonzero(keys == ordered[i])
        a, b = (paths[int(r)] for r in rows[:2])
        if a == b:
            first, second = (listing.where(int(order[r]), a) for r in rows[:2])
            raise SubsetError(f"duplicate path {a!r}: {first} and {second}")
        logger.warning("paths %r and %r share a key (harmless)", a, b)
    return len(same) == 0


def source_digest(classes: tuple[str, ...], labels: np.ndarray, keys: np.ndarray) -> str:
    """blake2b-128 (hex) of the class list and the labels and keys of the sorted rows."""
    h = hashlib.blake2b(b"mimscale-source-v1", digest_size=16)
    h.update(json.dumps(list(classes)).encode())
    h.update(np.ascontiguousarray(labels, dtype="<i4").tobytes())
    h.update(np.ascontiguousarray(keys, dtype="<u8").tobytes())
    return h.hexdigest()


def prepare_source(
    listing: Listing, *, kind: str, input: str, classes: tuple[str, ...] | None = None
) -> PreparedSource:
    """Sort ``listing`` by (wnid, path) and label it; ``classes`` fixes the class list.

    Takes the paths out of ``listing`` (its ``paths`` becomes None): at 14M paths the
    packed copy replaces them rather than adding to them.
    """
    labels, classes = _labels(listing, classes)
    counts = class_counts(labels, len(classes))
    # Group by class (a radix sort for ≤ 65,536 classes), pack the paths in that order,
    # then sort each class's paths in place.
    small = np.uint16 if len(classes) <= 1 << 16 else np.int64
    by_class = np.argsort(labels.astype(small), kind="stable")
    del labels
    packed = listing.paths.pack(by_class)
    listing.paths = None  # the packed copy replaces the source bytes (memory)
    order = by_class[sort_within_groups(packed, counts)]  # listing row of each sorted row
    labels = np.repeat(np.arange(len(classes), dtype=np.int32), counts)
    keys = keys_of_words(packed.words, packed.lengths)
    distinct = _check_duplicates(listing, packed, keys, order)
    return PreparedSource(
        kind=kind,
        input=input,
        classes=classes,
        paths=packed.to_arrow(),  # subsets filter these; the packed matrix is dropped
        labels=labels,
        keys=keys,
        counts=counts,
        digest=source_digest(classes, labels, keys),
        listing=listing,
        distinct_keys=distinct,
    )
