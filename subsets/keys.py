"""Stable 64-bit keys for image paths, and the seeded ranks that select subsets.

``key`` (the manifest column) is a hash of the path's UTF-8 bytes, defined by
:func:`path_key` (the pure-Python reference) and computed for millions of paths at
once by :func:`path_keys` (numpy, same values). The algorithm, "mimscale-key-v1":

    h = 0x9E3779B97F4A7C15 XOR len(bytes)
    for each 8-byte little-endian word w of the bytes (the last one zero-padded):
        h = fmix64(h XOR w)
    key = fmix64(h XOR 0x6A09E667F3BCC909)

where ``fmix64`` is MurmurHash3's 64-bit finalizer (a bijection). It is not a
cryptographic hash; it is fast in numpy (≈0.1 s per million paths, on the packed words
of :mod:`subsets.packed`; blake2b per path in Python would take ~15 s for IN-22K), the
same on every machine and numpy version, and easy to reimplement. Downstream code seeds per-image
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


def _keys_of_rows(words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    h = lengths.astype(np.uint64) ^ np.uint64(_INIT)
    tmp = np.empty_like(h)
    mixed = np.empty_like(h)
    for j in range(words.shape[1]):
        np.bitwise_xor(h, words[:, j], out=mixed)
        _fmix64_inplace(mixed, tmp)
        np.copyto(h, mixed, where=lengths > 8 * j)  # strings of ≤ 8·j bytes are done
    h ^= np.uint64(_FINAL)
    _fmix64_inplace(h, tmp)
    return h


def keys_of_words(words: np.ndarray, lengths: np.ndarray, workers: int = 2) -> np.ndarray:
    """Keys of packed paths (:class:`subsets.packed.PackedPaths` words and lengths)."""
    bounds = [(i, min(i + _CHUNK, len(lengths))) for i in range(0, len(lengths), _CHUNK)]
    if not bounds:
        return np.empty(0, dtype=np.uint64)
    # numpy releases the GIL in its loops, so threads use both cores.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        parts = pool.map(lambda b: _keys_of_rows(words[b[0] : b[1]], lengths[b[0] : b[1]]), bounds)
        return np.concatenate(list(parts))


def path_keys(paths: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """Keys (uint64) of many paths, equal to ``[path_key(p) for p in paths]``."""
    from subsets.packed import pack

    packed = pack(list(paths) if not isinstance(paths, pa.Array | pa.ChunkedArray) else paths)
    return keys_of_words(packed.words, packed.lengths)


def rank_keys(keys: np.ndarray, seed: int) -> np.ndarray:
    """Selection ranks: a keyed hash of (seed, path), computed from the path keys."""
    salt = np.uint64(_fmix64_int((seed + _INIT) & _MASK64))
    ranks = keys ^ salt
    _fmix64_inplace(ranks, np.empty_like(ranks))
    return ranks
