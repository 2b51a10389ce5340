"""Streaming shard writer of :mod:`subsets.pack`: image files in, Parquet shards out.

Files are read by a thread pool a window at a time (in pack order) and written a
block (one Parquet row group) at a time, so memory holds a window of files and one
block whatever the data set size. A block closes at ``block_bytes`` of the *files'*
bytes (or ``block_rows``), so a pack of pixels (``--pixels``: ~9× the bytes) has the
blocks, hence the epoch order, of a pack of the files with the same options; a shard
closes at ``shard_bytes`` of what it stores. Each shard's blake2b digest is computed from the
bytes as they are written.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from subsets.errors import SubsetError
from subsets.packlayout import SHARD_SCHEMA

MiB = 1 << 20


class PackOptions(Protocol):
    """The options the writer reads (a :class:`subsets.pack.PackConfig`)."""

    root: Path
    shard_bytes: int
    block_bytes: int
    block_rows: int
    workers: int
    pixels: bool


@dataclass
class _HashingFile:
    """A write-only file that hashes what goes through it (the shard digest, for free)."""

    raw: object
    digest: object = field(default_factory=lambda: hashlib.blake2b(digest_size=16))
    size: int = 0
    closed: bool = False
    captured: bytearray | None = None
    """Bytes written since capturing started (a block's, to find its images in)."""

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        if self.captured is not None:
            self.captured += data
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.close()
        self.closed = True

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False


def _read_file(root: Path, path: str) -> bytes:
    try:
        with open(root / path, "rb") as fh:
            return fh.read()
    except OSError as err:
        raise SubsetError(f"{root / path}: cannot read image: {err.strerror or err}") from None


def _images(
    root: Path, paths: pa.ChunkedArray, workers: int, pixels: bool
) -> Iterator[tuple[bytes, int]]:
    """(what is stored, the file's size) of every file, in order, read ahead by a thread
    pool a window at a time; stored is the file's bytes, or with ``pixels`` its pixel form."""
    window = 64 * workers
    if pixels:
        from scaling.data.decode import encode_pixels

    def load(path: str) -> tuple[bytes, int]:
        data = _read_file(root, path)
        return (encode_pixels(data) if pixels else data), len(data)

    with ThreadPoolExecutor(workers) as pool:
        for lo in range(0, len(paths), window):
            yield from pool.map(load, paths.slice(lo, window).to_pylist())


def _find_images(written: bytes, images: list[bytes]) -> np.ndarray:
    """Where each image's bytes start in ``written`` (a row group as written).

    A PLAIN, uncompressed BYTE_ARRAY column stores each value as its 4-byte length then
    its bytes, in row order, with page headers between pages: searching each
    length-and-prefix from the end of the previous image finds them all in one pass.
    Readers then fetch an image, or a block's images, by byte range without Parquet.
    """
    offsets = np.empty(len(images), dtype=np.int64)
    cursor = 0
    for i, image in enumerate(images):
        at = written.find(struct.pack("<I", len(image)) + image[:64], cursor)
        if at < 0 or written[at + 4 : at + 4 + len(image)] != image:
            raise RuntimeError(f"image {i} of a block not found in its row group")  # a bug
        offsets[i] = at + 4
        cursor = at + 4 + len(image)
    return offsets


class _ShardWriter:
    """Writes blocks into shard files, one after another, recording where rows went."""

    def __init__(self, folder: Path, config: PackOptions) -> None:
        self.folder, self.config = folder, config
        self.shards: list[dict] = []
        self.writer: pq.ParquetWriter | None = None
        self.sink: _HashingFile | None = None
        self.block_in_shard = 0
        self.rows_in_shard = 0
        self.image_bytes = 0

    def _open(self) -> None:
        name = f"shard-{len(self.shards):05d}.parquet"
        self.sink = _HashingFile(open(self.folder / name, "wb"))  # noqa: SIM115 (closed in _close)
        self.writer = pq.ParquetWriter(
            pa.PythonFile(self.sink, mode="w"),
            SHARD_SCHEMA,
            compression="none",  # encoded images do not compress; blocks stay one range
            use_dictionary=False,
            write_statistics=False,
            store_schema=False,
            data_page_size=MiB,
        )
        self.shards.append({"file": name, "rows": 0, "blocks": 0, "image_bytes": 0})
        self.block_in_shard = self.rows_in_shard = self.image_bytes = 0

    def _close(self) -> None:
        self.writer.close()
        self.sink.close()
        self.shards[-1].update(bytes=self.sink.size, digest=self.sink.digest.hexdigest())
        self.writer = None

    def write_block(self, keys: list[int], images: list[bytes]) -> tuple[int, int, int, np.ndarray]:
        """Write one block; return (shard, block within shard, first row within shard,
        file offset of every image's bytes)."""
        if self.writer is None:
            self._open()
        table = pa.table(
            [pa.array(keys, pa.uint64()), pa.array(images, pa.binary())], schema=SHARD_SCHEMA
        )
        start, self.sink.captured = self.sink.size, bytearray()
        self.writer.write_table(table, row_group_size=len(keys))  # writes the row group now
        offsets = start + _find_images(bytes(self.sink.captured), images)
        self.sink.captured = None
        where = (len(self.shards) - 1, self.block_in_shard, self.rows_in_shard, offsets)
        size = sum(map(len, images))
        shard = self.shards[-1]
        shard["rows"] += len(keys)
        shard["blocks"] += 1
        shard["image_bytes"] += size
        self.block_in_shard += 1
        self.rows_in_shard += len(keys)
        self.image_bytes += size
        if self.image_bytes >= self.config.shard_bytes:
            self._close()
        return where

    def finish(self) -> list[dict]:
        if self.writer is not None:
            self._close()
        return self.shards


def write_shards(folder: Path, config: PackOptions, keys: np.ndarray, paths: pa.ChunkedArray):
    """Stream the images into shards; (shards, shard/block/row/size/offset of every row)."""
    n = len(keys)
    shard_of, block_of = np.zeros(n, np.int32), np.zeros(n, np.int32)
    row_of, size_of = np.zeros(n, np.int64), np.zeros(n, np.int64)
    offset_of = np.zeros(n, np.int64)
    writer = _ShardWriter(folder, config)
    block_keys: list[int] = []
    block_images: list[bytes] = []
    block_size = first = 0

    def flush(end: int) -> None:
        shard, block, row, offsets = writer.write_block(block_keys, block_images)
        shard_of[first:end], block_of[first:end], offset_of[first:end] = shard, block, offsets
        row_of[first:end] = row + np.arange(end - first)
        block_keys.clear()
        block_images.clear()

    key_list = keys.tolist()
    images = _images(config.root.absolute(), paths, config.workers, config.pixels)
    for i, (image, file_size) in enumerate(images):
        block_keys.append(key_list[i])
        block_images.append(image)
        size_of[i] = len(image)
        block_size += file_size  # blocks by the files' bytes: a pixel pack's are the same
        if block_size >= config.block_bytes or len(block_keys) >= config.block_rows:
            flush(i + 1)
            block_size, first = 0, i + 1
    if block_keys:
        flush(n)
    return writer.finish(), (shard_of, block_of, row_of, size_of, offset_of)
