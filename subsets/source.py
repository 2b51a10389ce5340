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
import pyarrow.compute as pc

from subsets.errors import SubsetError
from subsets.keys import path_keys, rank_keys
from subsets.listing import Listing
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
    paths: pa.Array
    """Paths relative to the data root, sorted by (label, path)."""
    labels: np.ndarray
    """int32 label of every row (non-decreasing)."""
    keys: np.ndarray
    """uint64 key of every path (:func:`subsets.keys.path_key`)."""
    counts: np.ndarray
    """Images per class (int64)."""
    digest: str
    """Content digest of the source (see the module docstring)."""
    listing: Listing
    """Where the rows came from (origin, skipped entries, empty classes)."""
    _positions: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def positions(self, seed: int) -> np.ndarray:
        """Position of every row within its class in the order of ``seed``'s ranks."""
        if seed not in self._positions:
            ranks = rank_keys(self.keys, seed)
            self._positions[seed] = class_positions(self.labels, ranks, self.counts)
        return self._positions[seed]


def _encode(wnids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """(int codes per row, dictionary) of a string or dictionary column."""
    if not pa.types.is_dictionary(wnids.type):
        wnids = pc.dictionary_encode(wnids)
    if isinstance(wnids, pa.ChunkedArray):
        chunks = pa.table({"w": wnids}).unify_dictionaries().column("w").chunks
        if not chunks:
            return np.empty(0, dtype=np.int32), []
        codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks])
        return codes, chunks[0].dictionary.to_pylist()
    return wnids.indices.to_numpy(zero_copy_only=False), wnids.dictionary.to_pylist()


def _labels(listing: Listing, classes: tuple[str, ...] | None) -> tuple[np.ndarray, tuple]:
    codes, dictionary = _encode(listing.wnids)
    if classes is None:
        classes = tuple(sorted(dictionary))
    index = {w: i for i, w in enumerate(classes)}
    unknown = [i for i, w in enumerate(dictionary) if w not in index]
    if unknown:
        row = int(np.flatnonzero(np.isin(codes, unknown))[0])
        names = sorted(dictionary[i] for i in unknown)
        shown = ", ".join(names[:5]) + (" …" if len(names) > 5 else "")
        raise SubsetError(
            f"{listing.where(row)}: wnid {dictionary[codes[row]]} is unknown to train "
            f"({len(names)} unknown wnids: {shown})"
        )
    lut = np.array([index[w] for w in dictionary], dtype=np.int32)
    return lut[codes], classes


def _check_duplicates(listing: Listing, paths: pa.Array, keys: np.ndarray, order: np.ndarray):
    ordered = np.sort(keys)
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    for i in same[:100]:
        rows = np.flatnonzero(keys == ordered[i])
        a, b = (paths[int(r)].as_py() for r in rows[:2])
        if a == b:
            first, second = (listing.where(int(order[r])) for r in rows[:2])
            raise SubsetError(f"duplicate path {a!r}: {first} and {second}")
        logger.warning("key collision between %r and %r (harmless)", a, b)


def source_digest(classes: tuple[str, ...], labels: np.ndarray, keys: np.ndarray) -> str:
    h = hashlib.blake2b(b"mimscale-source-v1", digest_size=16)
    h.update(json.dumps(list(classes)).encode())
    h.update(np.ascontiguousarray(labels, dtype="<i4").tobytes())
    h.update(np.ascontiguousarray(keys, dtype="<u8").tobytes())
    return h.hexdigest()


def prepare_source(
    listing: Listing, *, kind: str, input: str, classes: tuple[str, ...] | None = None
) -> PreparedSource:
    """Sort ``listing`` by (wnid, path) and label it; ``classes`` fixes the class list."""
    labels, classes = _labels(listing, classes)
    # Sort by path, then stably by label: (label, path) order with one string sort.
    by_path = pc.sort_indices(listing.paths).to_numpy()
    order = by_path[np.argsort(labels[by_path], kind="stable")]
    del by_path
    paths = listing.paths.take(pa.array(order))
    if isinstance(paths, pa.ChunkedArray):
        paths = paths.combine_chunks()
    labels = labels[order]
    keys = path_keys(paths)
    _check_duplicates(listing, paths, keys, order)
    counts = class_counts(labels, len(classes))
    return PreparedSource(
        kind=kind,
        input=input,
        classes=classes,
        paths=paths,
        labels=labels,
        keys=keys,
        counts=counts,
        digest=source_digest(classes, labels, keys),
        listing=listing,
    )
