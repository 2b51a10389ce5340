"""The layout of a pack: its schemas, and which image goes where (pure functions).

See :mod:`subsets.pack` for the files. Here: the union of the manifests' images with a
membership bit mask per image (bit ``i``: manifest ``i``, manifests sorted by name),
and the pack order (:func:`order_rows`): by membership, so that nested fractions are
prefixes, then by a fixed hash of the key.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa

from subsets.arrow import to_numpy
from subsets.errors import SubsetError

PACK_FORMAT = 1
"""Pack format version; also the seed of the within-tier key hash."""
PACK_KEY = b"mimscale-pack"
FILES, PIXELS = "files", "pixels"
"""What a pack's ``image`` column holds (its metadata's ``content``; packs from before it
say nothing: files): each file's bytes, or its decoded pixels (``subsets pack --pixels``)."""
PIXELS_FORMAT = 2
"""The ``format`` a pixel pack records (its rows ordered as format 1's): a reader from
before pixel packs refuses it instead of taking every pixel form for a broken image."""
INDEX_NAME = "index.parquet"
SHARD_SCHEMA = pa.schema(
    [pa.field("key", pa.uint64(), nullable=False), pa.field("image", pa.binary(), nullable=False)]
)
INDEX_COLUMNS = ("key", "path", "shard", "block", "row", "size", "offset")
INDEX_DIGEST = "index_digest"
"""Key, in the index's pack metadata, of :func:`index_digest` (packs from before it have
none: their index is read unchecked)."""


def index_digest(table: pa.Table, meta: dict) -> str:
    """blake2b of an index: its pack metadata but this digest (canonical JSON), then its
    columns, whatever their chunking: every integer column as little-endian int64, the
    paths as their lengths then their UTF-8 bytes."""
    digest = hashlib.blake2b(digest_size=16)
    rest = {k: v for k, v in meta.items() if k != INDEX_DIGEST}
    digest.update(json.dumps(rest, sort_keys=True).encode())
    for name in INDEX_COLUMNS:
        column = table.column(name).combine_chunks()
        if name == "path":
            _, offsets_buffer, data = column.buffers()
            width = np.int64 if pa.types.is_large_string(column.type) else np.int32
            offsets = np.frombuffer(offsets_buffer or b"\0" * 8, dtype=width)
            offsets = offsets[column.offset : column.offset + len(column) + 1].astype(np.int64)
            digest.update(np.diff(offsets).astype("<i8").tobytes())
            digest.update(b"" if data is None else data[offsets[0] : offsets[-1]])
        else:
            digest.update(to_numpy(column).astype("<i8").tobytes())
    return digest.hexdigest()


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


def _is_subset(member: np.ndarray, small: int, large: int) -> bool:
    bits = (member >> np.uint64(small)) & ~(member >> np.uint64(large)) & np.uint64(1)
    return not bits.any()


def manifest_priority(member: np.ndarray, count: int) -> list[int]:
    """Manifest bits in the order that decides the layout: the *chain* first — from the
    largest manifest, each next one a subset of the one before (100 % ⊃ 50 % ⊃ …) —
    then the others, largest first (ties: lower bit, i.e. by name)."""
    sizes = [int(((member >> np.uint64(i)) & np.uint64(1)).sum()) for i in range(count)]
    by_size = sorted(range(count), key=lambda i: (-sizes[i], i))
    chain: list[int] = []
    for i in by_size:
        if not chain or _is_subset(member, i, chain[-1]):
            chain.append(i)
    return chain + [i for i in by_size if i not in chain]


def order_rows(member: np.ndarray, ranks: np.ndarray, count: int) -> np.ndarray:
    """The pack order of rows with membership masks ``member`` over ``count`` manifests.

    Rows sort by their membership read as a word, most significant bit the first
    manifest of :func:`manifest_priority`, descending, then by ``ranks``. Every chain
    manifest is then a prefix of the rows: rows of the smallest chain manifest come
    first (they are in every larger one), then the rest of the next, and so on; rows in
    no chain manifest (a disjoint val set) come last.
    """
    word = np.zeros(len(member), dtype=np.uint64)
    for place, bit in enumerate(manifest_priority(member, count)):
        word |= ((member >> np.uint64(bit)) & np.uint64(1)) << np.uint64(count - 1 - place)
    return np.lexsort((ranks, ~word))
