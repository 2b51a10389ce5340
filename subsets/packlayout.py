"""The layout of a pack: its schemas, and which image goes where (pure functions).

See :mod:`subsets.pack` for the files. Here: the union of the manifests' images with a
membership bit mask per image (bit ``i``: manifest ``i``, manifests sorted by name),
and the pack order — membership tiers (most manifests first, so nested fractions are
prefixes), a fixed key hash within a tier.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from subsets.arrow import to_numpy
from subsets.errors import SubsetError

PACK_FORMAT = 1
"""Pack format version; also the seed of the within-tier key hash."""
PACK_KEY = b"mimscale-pack"
INDEX_NAME = "index.parquet"
SHARD_SCHEMA = pa.schema(
    [pa.field("key", pa.uint64(), nullable=False), pa.field("image", pa.binary(), nullable=False)]
)
INDEX_COLUMNS = ("key", "path", "shard", "block", "row", "size")
MAX_MANIFESTS = 64


def union_rows(
    tables: list[tuple[pa.Table, str]],
) -> tuple[np.ndarray, pa.ChunkedArray, np.ndarray]:
    """(keys, paths, membership mask) of every distinct image, sorted by key.

    ``tables`` are (manifest table with ``path`` and ``key``, manifest name). Two
    manifests naming one key must name the same path (they come from one data root).
    """
    if len(tables) > MAX_MANIFESTS:
        raise SubsetError(f"pack: at most {MAX_MANIFESTS} manifests, got {len(tables)}")
    keys = np.concatenate([to_numpy(t.column("key")) for t, _ in tables])
    paths = pa.chunked_array([c for t, _ in tables for c in t.column("path").chunks], pa.string())
    bits = np.concatenate(
        [np.full(t.num_rows, 1 << i, dtype=np.uint64) for i, (t, _) in enumerate(tables)]
    )
    order = np.argsort(keys, kind="stable")
    keys, bits = keys[order], bits[order]
    first = np.concatenate([[True], keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, bool)
    group = np.cumsum(first) - 1
    member = np.zeros(int(first.sum()), dtype=np.uint64)
    np.bitwise_or.at(member, group, bits)
    paths = paths.take(pa.array(order))
    _check_same_paths(paths, first, tables)
    unique = pa.array(np.flatnonzero(first))
    return keys[first], paths.take(unique), member


def _check_same_paths(paths: pa.ChunkedArray, first: np.ndarray, tables) -> None:
    repeats = np.flatnonzero(~first)
    if not len(repeats):
        return
    repeated = paths.take(pa.array(repeats)).to_pylist()
    previous = paths.take(pa.array(repeats - 1)).to_pylist()
    for a, b in zip(previous, repeated, strict=True):
        if a != b:
            names = ", ".join(name for _, name in tables)
            raise SubsetError(
                f"pack: paths {a!r} and {b!r} share a key in the manifests {names}: are they "
                "built from different data roots?"
            )


def order_rows(member: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The pack order: by descending number of manifests, then mask, then rank."""
    count = np.bitwise_count(member).astype(np.int64)
    return np.lexsort((ranks, member, -count))


def tier_ranges(member: np.ndarray) -> list[tuple[int, int, int]]:
    """(mask, first row, end row) of each tier of rows already in pack order."""
    if not len(member):
        return []
    starts = np.flatnonzero(np.concatenate([[True], member[1:] != member[:-1]]))
    ends = np.append(starts[1:], len(member))
    return [(int(member[s]), int(s), int(e)) for s, e in zip(starts, ends, strict=True)]
