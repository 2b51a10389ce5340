"""Stable 64-bit keys for image paths, and the seeded ranks that select subsets.

``key`` (the manifest column) is a hash of the path's UTF-8 bytes, defined by
:func:`path_key` (the pure-Python reference) and computed for millions of paths at
once by :func:`path_keys` (numpy, same values). The algorithm, "mimscale-key-v1":

    h = 0x9E3779B97F4A7C15 XOR len(bytes)
    for each 8-byte little-endian word w of the bytes (the last one zero-padded):
        h = fmix64(h XOR w)
    key = fmix64(h XOR 0x6A09E667F3BCC909)

where ``fmix64`` is MurmurHash3's 64-bit finalizer (a bijection). It is not a
cryptographic hash; it is fast in numpy (≈0.1 s per million paths), the same on every
machine and numpy version, and easy to reimplement. Downstream code seeds per-image
randomness (e.g. the fixed validation mask) from it.

The selection rank of a path under a seed is ``fmix64(key XOR fmix64(seed + GOLDEN))``:
a keyed hash of (seed, path). Being a bijection of ``key``, distinct keys get distinct
ranks, so the order within a class is total and independent of listing order.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

KEY_ALGORITHM = "mimscale-key-v1"
_MASK64 = (1 << 64) - 1
_INIT = 0x9E3779B97F4A7C15  # also the GOLDEN increment for seeds
_FINAL = 0x6A09E667F3BCC909
_C1, _C2 = 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53
_CHUNK = 1 << 20  # rows per numpy batch: bounds temporaries to a few tens of MB


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * _C1) & _MASK64
    h ^= h >> 33
    h = (h * _C2) & _MASK64
    return h ^ (h >> 33)


def path_key(path: str) -> int:
    """The key of one path (reference implementation of ``mimscale-key-v1``)."""
    data = path.encode("utf-8")
    h = _INIT ^ len(data)
    for i in range(0, len(data), 8):
        h = _fmix64_int(h ^ int.from_bytes(data[i : i + 8], "little"))
    return _fmix64_int(h ^ _FINAL)


def _fmix64_inplace(h: np.ndarray, tmp: np.ndarray) -> None:
    s33 = np.uint64(33)
    np.right_shift(h, s33, out=tmp)
    h ^= tmp
    h *= np.uint64(_C1)
    np.right_shift(h, s33, out=tmp)
    h ^= tmp
    h *= np.uint64(_C2)
    np.right_shift(h, s33, out=tmp)
    h ^= tmp


def _keys_of_chunk(arr: pa.Array) -> np.ndarray:
    """Keys of one string/large_string array without nulls, word by word in numpy."""
    offset_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=offset_type)[arr.offset : arr.offset + len(arr) + 1]
    lo, hi = int(offsets[0]), int(offsets[-1])
    # Copy the bytes with 8 zero bytes of slack so that an unaligned 8-byte load at any
    # string start stays inside the buffer; an (unaligned, stride 1) uint64 view then
    # reads the word at byte offset p as ``words[p]``.
    padded = np.zeros(hi - lo + 8, dtype=np.uint8)
    if data_buf is not None:
        padded[: hi - lo] = np.frombuffer(data_buf, dtype=np.uint8)[lo:hi]
    words = np.ndarray(shape=(hi - lo + 1,), dtype="<u8", buffer=padded, strides=(1,))
    start = offsets[:-1].astype(np.int64) - lo
    length = np.diff(offsets).astype(np.int64)
    h = length.astype(np.uint64) ^ np.uint64(_INIT)
    tmp = np.empty_like(h)
    for i in range(0, int(length.max()) if len(length) else 0, 8):
        remaining = length - i
        w = words[np.minimum(start + i, hi - lo)]  # finished strings read a dummy word
        tail = remaining < 8
        if tail.any():  # zero the bytes past each string's end
            bits = (np.clip(remaining, 0, 7) * 8).astype(np.uint64)
            w &= np.where(tail, (np.uint64(1) << bits) - np.uint64(1), np.uint64(_MASK64))
        done = remaining <= 0
        before = h[done] if done.any() else None
        h ^= w
        _fmix64_inplace(h, tmp)
        if before is not None:
            h[done] = before
    h ^= np.uint64(_FINAL)
    _fmix64_inplace(h, tmp)
    return h


def path_keys(paths: pa.Array | pa.ChunkedArray | Sequence[str], workers: int = 2) -> np.ndarray:
    """Keys (uint64) of many paths, equal to ``[path_key(p) for p in paths]``."""
    if not isinstance(paths, pa.Array | pa.ChunkedArray):
        paths = pa.array(paths, type=pa.string())
    chunks = paths.chunks if isinstance(paths, pa.ChunkedArray) else [paths]
    if any(c.null_count for c in chunks):
        raise ValueError("paths must not contain nulls")
    pieces = [c.slice(i, _CHUNK) for c in chunks for i in range(0, len(c), _CHUNK)]
    if not pieces:
        return np.empty(0, dtype=np.uint64)
    # numpy releases the GIL in its loops, so threads use both cores.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return np.concatenate(list(pool.map(_keys_of_chunk, pieces)))


def rank_keys(keys: np.ndarray, seed: int) -> np.ndarray:
    """Selection ranks: a keyed hash of (seed, path), computed from the path keys."""
    salt = np.uint64(_fmix64_int((seed + _INIT) & _MASK64))
    ranks = keys ^ salt
    _fmix64_inplace(ranks, np.empty_like(ranks))
    return ranks
