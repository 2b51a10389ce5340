"""Paths as bytes in numpy: :class:`ByteStrings` (as read) and :class:`PackedPaths` (sorted).

Sorting and hashing 14M paths must stay in numpy, so paths never become Python or
Arrow strings on the way from a listing file to a manifest:

* ``ByteStrings``: one byte buffer plus the start and length of every string — a
  zero-copy view of a listing file, or a copy of an Arrow string array's data.
* ``PackedPaths``: an (N, W) matrix of little-endian uint64 words holding each path's
  UTF-8 bytes, zero-padded to 8·W bytes, plus the lengths. Viewed as ``S{8W}`` the rows
  compare like the strings in byte order (paths hold no NUL bytes), so per-class sorts
  are plain numpy sorts; the words are exactly what the key hash (:mod:`subsets.keys`)
  consumes; rows move as fixed-width copies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from subsets.errors import SubsetError

MAX_MATRIX_BYTES = 3 << 30  # 14M paths of up to 200 bytes
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype="<u8")  # k low bytes
_BLOCK = 4096
_SLACK = 8  # zero bytes after the last string, so any 8-byte load stays inside


@dataclass
class PackedPaths:
    """N paths as an (N, W) '<u8' word matrix plus their byte lengths."""

    words: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, row: int) -> str:
        return self.words[row].tobytes()[: int(self.lengths[row])].decode("utf-8")

    def take(self, rows: np.ndarray) -> PackedPaths:
        """Rows ``rows`` (indices or a boolean mask), copied."""
        return PackedPaths(self.words[rows], self.lengths[rows])

    def as_bytes(self) -> np.ndarray:
        """The rows as a 1-D ``S{8W}`` array (a view) that sorts in path byte order."""
        width = max(self.words.shape[1], 1) * 8
        if not self.words.shape[1]:
            return np.zeros(len(self), dtype="S8")
        return self.words.view(f"S{width}").reshape(len(self))

    def to_arrow(self, chunk_rows: int = 1 << 20) -> pa.ChunkedArray:
        """The paths as an Arrow string column (one chunk per ``chunk_rows`` rows)."""
        chunks = [
            _to_arrow(self.words[i : i + chunk_rows], self.lengths[i : i + chunk_rows])
            for i in range(0, len(self), chunk_rows)
        ]
        return pa.chunked_array(chunks, type=pa.string())


def _to_arrow(words: np.ndarray, lengths: np.ndarray) -> pa.StringArray:
    n, width = len(lengths), words.shape[1] * 8
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise SubsetError("more than 2 GiB of path text in one chunk")
    data = np.empty(0, dtype=np.uint8)
    if width:
        keep = np.arange(width, dtype=np.int64)[None, :] < lengths[:, None]
        data = words.view(np.uint8).reshape(n, width)[keep]
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)
    )


@dataclass
class ByteStrings:
    """Strings as slices of one byte buffer (which has 8 zero bytes of slack at its end)."""

    buf: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, row: int) -> str:
        start = int(self.starts[row])
        return self.buf[start : start + int(self.lengths[row])].tobytes().decode("utf-8")

    def take(self, rows: np.ndarray) -> ByteStrings:
        """Rows ``rows`` (indices or a boolean mask); shares the buffer."""
        return ByteStrings(self.buf, self.starts[rows], self.lengths[rows])

    def pack(self, order: np.ndarray | None = None) -> PackedPaths:
        """The strings (in ``order``, if given) as :class:`PackedPaths`."""
        starts = self.starts if order is None else self.starts[order]
        lengths = self.lengths if order is None else self.lengths[order]
        longest = int(lengths.max()) if len(lengths) else 0
        width = (longest + 7) // 8
        if len(lengths) * width * 8 > MAX_MATRIX_BYTES:
            raise SubsetError(
                f"{len(lengths):,} paths of up to {longest} bytes need "
                f"{len(lengths) * width * 8 / 2**30:.1f} GiB packed; shorten them "
                "(a data root closer to the images) or split the source"
            )
        # An unaligned uint64 view with stride 1: view[p] is the 8 bytes at offset p.
        view = np.ndarray((len(self.buf) - 7,), dtype="<u8", buffer=self.buf, strides=(1,))
        last = len(view) - 1
        words = np.empty((len(lengths), width), dtype="<u8")
        # Small blocks keep the temporaries and the source cache lines of a block's rows
        # in cache across its words (the rows may come in any order).
        for lo in range(0, len(lengths), _BLOCK):
            block_starts, block_lengths = starts[lo : lo + _BLOCK], lengths[lo : lo + _BLOCK]
            out = words[lo : lo + _BLOCK]
            for j in range(width):
                remaining = np.clip(block_lengths - 8 * j, 0, 8)
                # Bytes past a string's end belong to the next string: mask them off.
                out[:, j] = view[np.minimum(block_starts + 8 * j, last)] & _BYTE_MASKS[remaining]
        return PackedPaths(words, lengths.astype(np.int64))

    def ends_with_any(self, suffixes: tuple[bytes, ...]) -> np.ndarray:
        """Rows ending in one of ``suffixes`` (ASCII, ≤ 8 bytes, any letter case)."""
        view = np.ndarray((len(self.buf) - 7,), dtype="<u8", buffer=self.buf, strides=(1,))
        # The last 8 bytes of every string (fewer for short strings: shifted in below).
        ends = self.starts + self.lengths
        tail = view[np.clip(ends - 8, 0, len(view) - 1)]
        short = np.flatnonzero(self.lengths < 8)
        tail[short] = view[self.starts[short]] << ((8 - self.lengths[short]) * 8).astype(np.uint64)
        keep = np.zeros(len(self), dtype=bool)
        for suffix in suffixes:
            n = len(suffix)
            value = int.from_bytes(suffix.lower(), "little") << (8 * (8 - n))
            # Setting bit 0x20 folds an ASCII letter to lower case; other bytes stay exact.
            fold = sum(0x20 << (8 * (8 - n + i)) for i, c in enumerate(suffix) if chr(c).isalpha())
            top = ((1 << (8 * n)) - 1) << (8 * (8 - n))  # the suffix's bytes of ``tail``
            hit = ((tail | np.uint64(fold)) & np.uint64(top)) == np.uint64(value)
            keep |= hit & (self.lengths >= n)
        return keep

    def find_component(self, component: bytes) -> int | None:
        """First row with ``component`` as a whole '/'-separated part, else None."""
        ends = self.starts + self.lengths
        for match in re.finditer(re.escape(component), memoryview(self.buf)):
            pos = match.start()
            row = int(np.searchsorted(self.starts, pos, side="right")) - 1
            if row < 0 or match.end() > ends[row]:
                continue
            starts_part = pos == self.starts[row] or self.buf[pos - 1] == ord("/")
            ends_part = match.end() == ends[row] or self.buf[match.end()] == ord("/")
            if starts_part and ends_part:
                return row
        return None


def _from_list(paths: list[str]) -> ByteStrings:
    encoded = [p.encode("utf-8") for p in paths]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    starts = np.cumsum(lengths) - lengths
    buf = np.zeros(int(lengths.sum()) + _SLACK, dtype=np.uint8)
    buf[: len(buf) - _SLACK] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return ByteStrings(buf, starts, lengths)


def byte_strings(paths: pa.Array | pa.ChunkedArray | list[str]) -> ByteStrings:
    """Arrow strings (or a list of str) as :class:`ByteStrings` (one copy of the bytes)."""
    if isinstance(paths, list):
        return _from_list(paths)
    if isinstance(paths, pa.ChunkedArray):
        if not paths.num_chunks:
            return _from_list([])
        paths = paths.combine_chunks()
    if paths.null_count:
        raise SubsetError("paths must not be null")
    large = pa.types.is_large_string(paths.type)
    _, off_buf, data_buf = paths.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64 if large else np.int32)
    offsets = offsets[paths.offset : paths.offset + len(paths) + 1].astype(np.int64)
    lo, hi = (int(offsets[0]), int(offsets[-1])) if len(offsets) else (0, 0)
    buf = np.zeros(hi - lo + _SLACK, dtype=np.uint8)
    if data_buf is not None and hi > lo:
        buf[: hi - lo] = np.frombuffer(data_buf, dtype=np.uint8)[lo:hi]
    return ByteStrings(buf, offsets[:-1] - lo, np.diff(offsets))


def pack(paths: pa.Array | pa.ChunkedArray | list[str]) -> PackedPaths:
    """Pack string paths (Arrow or a list) into :class:`PackedPaths`."""
    return byte_strings(paths).pack()


def sort_within_groups(packed: PackedPaths, counts: np.ndarray) -> np.ndarray:
    """Sort each consecutive group (sizes ``counts``) of ``packed`` by path bytes, in place.

    Returns the permutation applied: new row i is old row ``order[i]``.
    """
    text = packed.as_bytes()
    order = np.arange(len(packed), dtype=np.int64)
    start = 0
    for size in counts.tolist():
        if size > 1:
            end = start + size
            within = np.argsort(text[start:end])
            if np.any(within[1:] < within[:-1]):  # not already sorted
                order[start:end] = start + within
                packed.words[start:end] = packed.words[start:end][within]
                packed.lengths[start:end] = packed.lengths[start:end][within]
        start += size
    return order
