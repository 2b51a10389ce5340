"""Read a pack (:mod:`subsets.pack`) from a local path or a URI, and order epochs by block.

    pack = open_pack("/data/in1k-pack")             # or "s3://bucket/in1k-pack"
    rows = pack.rows_of(manifest_keys, "in1k-10pct") # pack row of every manifest row
    data, starts = pack.block_bytes(pack.block_of[rows[0]])  # one ranged read
    pack.verify()                                    # {shard file: problem}, {} if intact

Storage goes through pyarrow's file systems (``FileSystem.from_uri``: local, ``s3://``
with the usual ``AWS_*`` variables and ``AWS_ENDPOINT_URL``, ``gs://``, ``hdfs://``), or
any ``pyarrow.fs.FileSystem`` passed in. A block is one Parquet row group; the index
records where each image's bytes start in its shard, so a block is fetched with one
ranged read of its images and sliced without Parquet decoding (``block_bytes``);
``read_block`` reads the same images through the Parquet reader. A shard on a local path
(a local disk, or a shared file system mounted locally) is memory-mapped instead: a block
is a view of the mapping (no copy into a fresh buffer, which cost more than the read
itself when the shard is in the page cache), and the kernel is asked to read the whole
block ahead (``MADV_WILLNEED``), so the first images of a block are decoded while the
rest arrive. Shards are immutable once packed: a shard truncated *while* mapped would
fault the reading process (packs are never rewritten in place; ``subsets pack`` writes
new files).

**Epoch order** (:func:`epoch_order`, a pure function of (seed, epoch)): the rows of a
manifest are grouped by the block that holds them; the blocks are permuted, then rows
are shuffled within each *window* of ``window`` consecutive blocks. An epoch is a
permutation of the rows (each visited once), and a contiguous run of the order touches
about ``window`` blocks, so a rank's slice of a step reads a few blocks, not one per
image. Since the pack itself is in random class order, a block is already a random
sample of its tier; the window mixes blocks so batches differ from epoch to epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from subsets.arrow import to_numpy
from subsets.errors import SubsetError
from subsets.packlayout import (
    FILES,
    INDEX_COLUMNS,
    INDEX_DIGEST,
    INDEX_NAME,
    PACK_KEY,
    PIXELS,
    PIXELS_FORMAT,
    index_digest,
)

_EPOCH_TAG = 0x5348415244  # "SHARD": the epoch order's own random stream


def _resolve(location: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, location.rstrip("/")
    if "://" in location:
        try:
            fs, base = pafs.FileSystem.from_uri(location)
        except (pa.ArrowException, OSError) as err:
            raise SubsetError(f"pack {location}: cannot open: {err}") from None
        return fs, base.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(location).absolute())


class Pack:
    """An opened pack: its index in memory, its shards read block by block on demand."""

    def __init__(self, location: str | os.PathLike[str], filesystem: Any = None) -> None:
        self.location = str(location)
        self._filesystem = filesystem
        self.fs, self.base = _resolve(self.location, filesystem)
        self._by_key: np.ndarray | None = None
        self._open: dict[int, pa.NativeFile] = {}
        self._maps: dict[int, mmap.mmap] = {}
        self._local = isinstance(self.fs, pafs.LocalFileSystem) and filesystem is None
        self._pid = os.getpid()
        index = self._read_index()
        self.meta: dict[str, Any] = json.loads(index.schema.metadata[PACK_KEY])
        try:
            self._layout(index)
        except (KeyError, TypeError, ValueError, IndexError) as err:  # damaged metadata
            raise SubsetError(
                f"pack {self.location}: {INDEX_NAME} does not describe its shards "
                f"({type(err).__name__}: {err}); repack, or check it with "
                "`mimscale subsets pack-verify`"
            ) from None
        self.content: str = self.meta.get("content", FILES)
        """``files`` (each file's bytes) or ``pixels`` (decoded: ``subsets pack --pixels``)."""
        if self.content not in (FILES, PIXELS):
            raise SubsetError(
                f"pack {self.location}: {INDEX_NAME} says it holds {self.content!r} images, "
                f"which this version does not read ({FILES!r} or {PIXELS!r})"
            )

    def _layout(self, index: pa.Table) -> None:
        """Shards, rows and blocks from the index (its columns and metadata)."""
        self.shards: list[dict[str, Any]] = self.meta["shards"]
        self.keys = to_numpy(index.column("key"))
        self.paths = index.column("path")
        self.sizes = to_numpy(index.column("size"))
        self.offsets = to_numpy(index.column("offset"))
        """Where each image's bytes start in its shard file."""
        shard, block = to_numpy(index.column("shard")), to_numpy(index.column("block"))
        first_block = np.cumsum([0] + [s["blocks"] for s in self.shards])
        self.block_of = (first_block[shard] + block).astype(np.int64)
        """Global block id of every pack row."""
        starts = np.flatnonzero(np.diff(self.block_of, prepend=-1) != 0)
        self.block_starts = np.append(starts, len(self.keys))
        self.block_shard = shard[starts]
        self.block_group = block[starts]

    def _read_index(self) -> pa.Table:
        path = f"{self.base}/{INDEX_NAME}"
        try:
            with self.fs.open_input_file(path) as fh:  # page checksums: flipped bytes
                index = pq.read_table(
                    fh, columns=list(INDEX_COLUMNS), page_checksum_verification=True
                )
        except FileNotFoundError:
            raise SubsetError(f"pack {self.location}: no {INDEX_NAME} (not a pack?)") from None
        except (pa.ArrowException, OSError, KeyError) as err:
            raise SubsetError(f"pack {self.location}: unreadable {INDEX_NAME}: {err}") from None
        raw = (index.schema.metadata or {}).get(PACK_KEY)
        try:
            meta = json.loads(raw) if raw is not None else None
        except ValueError:  # a flipped byte in the footer's metadata
            meta = None
        if not isinstance(meta, dict) or meta.get("format", 0) > PIXELS_FORMAT:
            raise SubsetError(f"pack {self.location}: {INDEX_NAME} is not a pack index this reads")
        self._index = index
        return index

    def verify_index(self) -> str | None:
        """The index's columns against the digest it records (None: intact, or a pack from
        before index digests); else what is wrong. Reads nothing more."""
        recorded = self.meta.get(INDEX_DIGEST)
        if recorded is None:
            return None
        actual = index_digest(self._index, self.meta)
        if actual != recorded:
            return f"digest {actual}, its metadata says {recorded} (the index was changed)"
        return None

    def __reduce__(self) -> tuple[Any, ...]:  # data-loader workers reopen it by location
        return (Pack, (self.location, self._filesystem))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def num_blocks(self) -> int:
        return len(self.block_shard)

    def rows_of(self, keys: np.ndarray, what: str) -> np.ndarray:
        """The pack row of each key (a manifest's ``key`` column); ``what`` names it."""
        if self._by_key is None:
            self._by_key = np.argsort(self.keys, kind="stable")
        sorted_keys = self.keys[self._by_key]
        pos = np.minimum(np.searchsorted(sorted_keys, keys), max(len(sorted_keys) - 1, 0))
        found = (sorted_keys[pos] == keys) if len(sorted_keys) else np.zeros(len(keys), bool)
        if not found.all():
            missing = int((~found).sum())
            raise SubsetError(
                f"{what}: {missing} of its {len(keys)} images are not in the pack "
                f"{self.location} (pack it with this manifest: mimscale subsets pack)"
            )
        return self._by_key[pos].astype(np.int64)

    def close(self) -> None:
        """Close the shard handles and unmap the shards (a map still viewed stays until its
        views are gone); the pack reopens them on the next read."""
        for handle in self._open.values():
            handle.close()
        for mapped in self._maps.values():
            # a view into it still alive: the garbage collector unmaps it with the last one
            with contextlib.suppress(BufferError):
                mapped.close()
        self._open, self._maps = {}, {}

    def _forked(self) -> None:
        if self._pid != os.getpid():  # a forked worker: own handles, maps and clients
            self._open, self._maps, self._pid = {}, {}, os.getpid()
            self.fs, self.base = _resolve(self.location, self._filesystem)

    def _map(self, shard: int) -> mmap.mmap:
        """The local shard file ``shard`` memory-mapped read-only (kept for the process)."""
        self._forked()
        if shard not in self._maps:
            with open(f"{self.base}/{self.shards[shard]['file']}", "rb") as fh:
                self._maps[shard] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[shard]

    def _file(self, shard: int) -> pa.NativeFile:
        self._forked()
        if shard not in self._open:
            path = f"{self.base}/{self.shards[shard]['file']}"
            self._open[shard] = self.fs.open_input_file(path)
        return self._open[shard]

    def _failed(self, block: int, err: Exception) -> SubsetError:
        shard, group = int(self.block_shard[block]), int(self.block_group[block])
        return SubsetError(
            f"pack {self.location}: {self.shards[shard]['file']} block {group}: {err}"
        )

    def block_bytes(self, block: int) -> tuple[memoryview, np.ndarray]:
        """(data, starts) of one block, fetched with one ranged read and no Parquet
        decoding: image ``i`` (row ``block_starts[block] + i``) is
        ``data[starts[i] : starts[i] + sizes[row]]``."""
        lo, hi = int(self.block_starts[block]), int(self.block_starts[block + 1])
        first = int(self.offsets[lo])
        end = int(self.offsets[hi - 1] + self.sizes[hi - 1])
        shard = int(self.block_shard[block])
        try:
            data = self._mapped(shard, first, end) if self._local else None
            if data is None:
                data = memoryview(self._file(shard).read_at(end - first, first))
        except (pa.ArrowException, OSError, ValueError) as err:
            raise self._failed(block, err) from None
        if len(data) != end - first:
            raise self._failed(block, EOFError(f"{len(data)} of {end - first} bytes"))
        return data, self.offsets[lo:hi] - first

    def _mapped(self, shard: int, first: int, end: int) -> memoryview | None:
        """Bytes ``first:end`` of local shard ``shard`` as a view of its mapping, the
        kernel asked to read them ahead; None for an empty file (mmap cannot map it)."""
        try:
            mapped = self._map(shard)
        except ValueError:  # an empty file: the ranged read reports it
            return None
        end = min(end, len(mapped))  # a shorter file: the length check names it
        if end > first:
            start = first - first % mmap.PAGESIZE
            mapped.madvise(mmap.MADV_WILLNEED, start, end - start)
        return memoryview(mapped)[first:end]

    def read_block(self, block: int) -> pa.BinaryArray:
        """The images of one block through the Parquet reader (as any tool reads them)."""
        shard, group = int(self.block_shard[block]), int(self.block_group[block])
        try:
            table = pq.ParquetFile(self._file(shard)).read_row_group(group, columns=["image"])
        except (pa.ArrowException, OSError) as err:
            raise self._failed(block, err) from None
        return table.column("image").combine_chunks()

    def read_rows(self, rows: np.ndarray) -> list[bytes]:
        """The encoded images of pack rows ``rows`` (reads each block they touch once)."""
        out: list[bytes] = [b""] * len(rows)
        blocks = self.block_of[rows]
        for block in np.unique(blocks).tolist():
            data, starts = self.block_bytes(block)
            for i in np.flatnonzero(blocks == block).tolist():
                row = int(rows[i])
                start = int(starts[row - self.block_starts[block]])
                out[i] = data[start : start + int(self.sizes[row])].tobytes()
        return out

    def verify(self, shards: list[int] | None = None) -> dict[str, str]:
        """The index's digest, then every shard's (one sequential read each; ``shards``:
        only those); {file: problem}."""
        problems = {}
        index_problem = self.verify_index() if shards is None else None
        if index_problem:
            problems[INDEX_NAME] = index_problem
        for i in range(len(self.shards)) if shards is None else shards:
            info = self.shards[i]
            digest = hashlib.blake2b(digest_size=16)
            try:
                with self.fs.open_input_stream(f"{self.base}/{info['file']}") as fh:
                    while chunk := fh.read(8 << 20):
                        digest.update(chunk)
            except (pa.ArrowException, OSError) as err:
                problems[info["file"]] = f"unreadable: {err}"
                continue
            if digest.hexdigest() != info["digest"]:
                problems[info["file"]] = f"digest {digest.hexdigest()}, index says {info['digest']}"
        return problems


def open_pack(location: str | os.PathLike[str], filesystem: Any = None) -> Pack:
    """Open the pack at ``location`` (a folder or URI holding ``index.parquet``)."""
    return Pack(location, filesystem)


def epoch_order(blocks: np.ndarray, *, seed: int, epoch: int, window: int = 4) -> np.ndarray:
    """A permutation of ``range(len(blocks))`` visiting rows block by block (module doc).

    ``blocks[i]`` is the block of row ``i`` (any integers); pure in (blocks, seed, epoch,
    window).
    """
    if window < 1:
        raise ValueError(f"window: must be >= 1, got {window}")
    ids, inverse = np.unique(np.asarray(blocks), return_inverse=True)
    rng = np.random.default_rng([seed, epoch, _EPOCH_TAG])
    place = np.empty(len(ids), dtype=np.int64)
    place[rng.permutation(len(ids))] = np.arange(len(ids))  # where each block goes
    slot = place[inverse.reshape(-1)] // window  # the window each row lands in
    return np.lexsort((rng.random(len(blocks)), slot)).astype(np.int64)
