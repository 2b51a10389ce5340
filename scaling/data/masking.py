"""SimMIM random block masking, seeded explicitly (never a global RNG).

For a 192 px image, 32 px mask patches and a model patch of 4 px, the image is a
6×6 grid of mask blocks; exactly ``ceil(ratio · 36)`` blocks are masked (22 at
ratio 0.6) and the block mask is upsampled ×8 to the 48×48 token grid that the
encoder sees. Every mask is a pure function of its seed words, so a sample's
mask is the same on every machine, worker count and rerun.

Algorithm (``v1``): the seed words ``(w0, w1, …)`` — e.g. ``(seed, epoch, sample
index)`` or ``(VAL_MASK_SEED, manifest key)`` — are encoded as bytes, hashed with
SHAKE-128 (an extendable-output hash) to ``8·N`` bytes for the ``N = n²`` blocks,
and read as ``N`` little-endian uint64 scores, one per block in row-major order.
The ``k = ceil(ratio · N)`` blocks with the smallest scores are masked (a stable
sort: a tie goes to the lower block index). The scores are independent and uniform,
so every ``k``-subset of blocks is equally likely (up to ties, probability below
``N²/2⁶⁵``), and any change of any word gives an unrelated mask. The encoding is
``b"mimscale-mask-v1-u64:"`` followed by the words as little-endian uint64 when all
of them are below 2⁶⁴; otherwise ``b"mimscale-mask-v1-big:"`` followed by, for each
word, its byte length (uint32 little-endian) and its little-endian bytes. Both are
injective, so distinct word tuples — including ones that differ only in length,
such as ``(1, 2)`` and ``(1, 2, 0)`` — hash distinct messages. Words must be
non-negative integers, Python's or numpy's (else ValueError, or TypeError for
floats and strings, which the old ``int(w)`` silently truncated or parsed).

This replaces ``np.random.default_rng(words).permutation`` (masks before ``v1``
differ): building numpy's SeedSequence cost ~50–150 µs per mask, the hash ~1 µs.
A call is one hash, one ``N``-element sort and one gather that writes the token grid
in the widest of 8-, 4-, 2- or 1-byte units that divides the block's side in tokens
(``bench/bench_masking.py`` times the old and the new algorithm).
"""

from __future__ import annotations

import math
import operator
import struct
from dataclasses import dataclass
from hashlib import shake_128
from typing import NamedTuple

import numpy as np

from scaling.errors import UserError

# Validation masks are seeded by (VAL_MASK_SEED, image key) so that every cell,
# model and rerun scores the same pixels of the same image.
VAL_MASK_SEED = 20230101

_TAG_U64 = b"mimscale-mask-v1-u64:"
_TAG_BIG = b"mimscale-mask-v1-big:"
_PACK_U64 = tuple(struct.Struct(f"<{m}Q").pack for m in range(9))  # by word count
_SCORE = np.dtype("<u8")
_UINT8 = np.dtype(np.uint8)


class MaskConfigError(UserError):
    """Mask geometry that cannot work (the key is relative: ``pretrain.`` is the caller's)."""


def check_mask_geometry(
    *,
    image_size: int,
    mask_patch_size: int,
    model_patch_size: int,
    mask_ratio: float | None,
    section: str = "",
    model: str = "the model",
) -> None:
    """The one definition of the mask rules, checked at study load and by the generator:
    mask blocks tile the image, hold whole tokens, and the ratio is in (0, 1)."""
    key = f"{section}." if section else ""
    if mask_patch_size <= 0 or image_size % mask_patch_size:
        raise MaskConfigError(
            f"{key}mask_patch_size: must divide image_size {image_size}, got {mask_patch_size}"
        )
    if mask_patch_size % model_patch_size:
        raise MaskConfigError(
            f"{key}mask_patch_size: must be a multiple of {model}'s patch size "
            f"{model_patch_size}, got {mask_patch_size}"
        )
    if mask_ratio is not None and not 0.0 < mask_ratio < 1.0:
        raise MaskConfigError(f"{key}mask_ratio: must be in (0, 1), got {mask_ratio}")


class _Plan(NamedTuple):
    """What a configuration's masks need, computed once per generator."""

    k: int
    """Blocks masked."""
    digest_size: int
    """Bytes of SHAKE-128 output: 8 per block."""
    zeros: np.ndarray
    """(N,) zeros of the gather unit: the widest of uint64/32/16/8 whose bytes divide the scale."""
    one: int
    """A masked unit: every byte 0x01 (the same in either byte order)."""
    units: np.ndarray
    """(H, W / unit bytes) intp: the block index of every unit of the token grid."""


def _plan(n: int, scale: int, k: int) -> _Plan:
    unit = next(u for u in (8, 4, 2, 1) if scale % u == 0)
    side = n * scale
    rows = np.arange(side) // scale  # block row of each token row
    cols = np.arange(0, side, unit) // scale  # block column of each unit of a row
    units = rows[:, None] * n + cols[None, :]
    units.flags.writeable = False
    zeros = np.zeros(n * n, np.dtype(f"u{unit}"))
    return _Plan(k, 8 * n * n, zeros, int.from_bytes(b"\x01" * unit, "little"), units)


def _message(words: tuple[int, ...]) -> bytes:
    """The hashed bytes of any tuple of seed words (see the module docstring)."""
    try:
        return _TAG_U64 + struct.pack(f"<{len(words)}Q", *words)
    except struct.error:
        pass  # a word of 2⁶⁴ or more, or not a non-negative integer
    ints = [operator.index(w) for w in words]  # TypeError for floats, strings, …
    if any(w < 0 for w in ints):
        raise ValueError(f"seed words must be non-negative integers, got {tuple(ints)}")
    parts = [_TAG_BIG]
    for w in ints:
        data = w.to_bytes((w.bit_length() + 7) // 8, "little")
        parts += [len(data).to_bytes(4, "little"), data]
    return b"".join(parts)


@dataclass(frozen=True, kw_only=True)
class MaskGenerator:
    """Random block masks on the token grid of a model."""

    input_size: int = 192
    """Image side in pixels."""
    mask_patch_size: int = 32
    """Side of one masked block in pixels."""
    model_patch_size: int = 4
    """Side of one encoder token in pixels (the patch embedding's stride)."""
    mask_ratio: float = 0.6
    """Fraction of blocks masked (rounded up to whole blocks)."""

    def __post_init__(self) -> None:
        check_mask_geometry(
            image_size=self.input_size,
            mask_patch_size=self.mask_patch_size,
            model_patch_size=self.model_patch_size,
            mask_ratio=self.mask_ratio,
        )
        # not a field: left out of __eq__, __hash__ and __repr__
        plan = _plan(self.blocks_per_side, self.scale, self.num_masked_blocks)
        object.__setattr__(self, "_plan", plan)

    @property
    def blocks_per_side(self) -> int:
        return self.input_size // self.mask_patch_size

    @property
    def scale(self) -> int:
        """Tokens per mask block along one side."""
        return self.mask_patch_size // self.model_patch_size

    @property
    def num_masked_blocks(self) -> int:
        return math.ceil(self.blocks_per_side**2 * self.mask_ratio)

    def __call__(self, *seed_words: int) -> np.ndarray:
        """Mask for the given seed words, e.g. ``(seed, epoch, sample_index)``.

        Returns a uint8 array of shape (H/patch, W/patch): 1 = masked token.
        """
        k, digest_size, zeros, one, units = self._plan  # type: ignore[attr-defined]
        try:  # _message's common case, inlined: up to 8 words, all uint64
            message = _TAG_U64 + _PACK_U64[len(seed_words)](*seed_words)
        except (IndexError, struct.error):
            message = _message(seed_words)
        scores = np.frombuffer(shake_128(message).digest(digest_size), _SCORE)
        blocks = zeros.copy()  # one gather unit per block, row-major
        blocks[scores.argsort(kind="stable")[:k]] = one
        return blocks.take(units).view(_UINT8)  # a fresh, writable (H, W) array

    def val_mask(self, key: int) -> np.ndarray:
        """The fixed validation mask of the image whose manifest ``key`` is given."""
        return self(VAL_MASK_SEED, int(key))
