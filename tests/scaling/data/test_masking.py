"""SimMIM block masks: exact statistics, seeded determinism, the v1 hash, size errors."""

from __future__ import annotations

import hashlib
import itertools
import math
import pickle
from collections.abc import Callable

import numpy as np
import pytest

from scaling.data.masking import VAL_MASK_SEED, MaskConfigError, MaskGenerator

PAPER = MaskGenerator(input_size=192, mask_patch_size=32, model_patch_size=4, mask_ratio=0.6)


def reference_mask(gen: MaskGenerator, *words: int) -> np.ndarray:
    """The module docstring's algorithm, written out plainly (slow, no shared code)."""
    if all(w < 2**64 for w in words):
        message = b"mimscale-mask-v1-u64:" + b"".join(int(w).to_bytes(8, "little") for w in words)
    else:
        message = b"mimscale-mask-v1-big:"
        for w in map(int, words):
            data = w.to_bytes((w.bit_length() + 7) // 8, "little")
            message += len(data).to_bytes(4, "little") + data
    n = gen.blocks_per_side
    digest = hashlib.shake_128(message).digest(8 * n * n)
    scores = [int.from_bytes(digest[8 * i : 8 * i + 8], "little") for i in range(n * n)]
    chosen = sorted(range(n * n), key=lambda i: (scores[i], i))[: gen.num_masked_blocks]
    mask = np.zeros((n * gen.scale, n * gen.scale), dtype=np.uint8)
    for i in chosen:
        r, c = divmod(i, n)
        mask[r * gen.scale : (r + 1) * gen.scale, c * gen.scale : (c + 1) * gen.scale] = 1
    return mask


def blocks_of(gen: MaskGenerator, mask: np.ndarray) -> np.ndarray:
    """(n, n) block mask of a token mask, checking that each block is uniform."""
    n, s = gen.blocks_per_side, gen.scale
    tiles = mask.reshape(n, s, n, s)
    assert (tiles == tiles[:, :1, :, :1]).all(), "a mask block is not uniform"
    return tiles[:, 0, :, 0]


def test_paper_mask_statistics_are_exact() -> None:
    gen = PAPER
    assert (gen.blocks_per_side, gen.scale, gen.num_masked_blocks) == (6, 8, 22)
    assert gen.num_masked_blocks == math.ceil(0.6 * 36)
    for sample in range(20):
        mask = gen(7, 0, sample)
        assert mask.shape == (48, 48) and mask.dtype == np.uint8
        blocks = mask[::8, ::8]  # (6, 6): one value per 32 px block
        assert blocks.sum() == 22
        assert np.array_equal(mask, np.kron(blocks, np.ones((8, 8), dtype=np.uint8)))


# Every gather unit (8-, 4-, 2-, 1-byte), odd scales and grids, scale 1, other ratios.
SHAPES = [
    (192, 32, 4, 0.6),  # 6×6 blocks, scale 8
    (32, 8, 4, 0.6),  # quickstart and tests/test_data.py: 4×4, scale 2
    (64, 16, 4, 0.6),  # 4×4, scale 4
    (192, 64, 4, 0.6),  # 3×3, scale 16
    (96, 12, 4, 0.5),  # 8×8, scale 3
    (224, 32, 32, 0.75),  # 7×7, scale 1
    (224, 32, 16, 0.3),  # 7×7, scale 2
]


@pytest.mark.parametrize(("size", "mask_patch", "patch", "ratio"), SHAPES)
def test_masks_follow_the_documented_algorithm(
    size: int, mask_patch: int, patch: int, ratio: float
) -> None:
    gen = MaskGenerator(
        input_size=size, mask_patch_size=mask_patch, model_patch_size=patch, mask_ratio=ratio
    )
    side = size // patch
    words = [(3, 1, i) for i in range(40)] + [
        (),
        (0,),
        (VAL_MASK_SEED, 2**64 - 1),
        (2**64,),
        (5, 2**200 + 7, 0),
        tuple(range(10, 21)),  # more words than the fast path packs
    ]
    for w in words:
        mask = gen(*w)
        assert mask.shape == (side, side) and mask.dtype == np.uint8
        assert mask.flags.c_contiguous and mask.flags.writeable
        assert blocks_of(gen, mask).sum() == gen.num_masked_blocks
        assert np.array_equal(mask, reference_mask(gen, *w)), w


def test_golden_masks_pin_the_algorithm() -> None:
    """Fixed values: the same on every machine, process and numpy version."""
    assert PAPER(7, 0, 0)[::8, ::8].tolist() == [
        [0, 0, 1, 1, 1, 1],
        [0, 1, 1, 0, 1, 1],
        [1, 1, 0, 0, 0, 1],
        [0, 0, 1, 1, 1, 1],
        [1, 0, 0, 1, 1, 0],
        [1, 1, 1, 0, 1, 0],
    ]
    assert PAPER.val_mask(12345)[::8, ::8].tolist() == [
        [0, 1, 1, 0, 0, 0],
        [0, 1, 1, 1, 1, 1],
        [1, 0, 0, 1, 1, 0],
        [0, 1, 1, 1, 1, 1],
        [1, 0, 0, 0, 1, 0],
        [1, 1, 1, 1, 0, 1],
    ]
    quick = MaskGenerator(input_size=32, mask_patch_size=8, model_patch_size=4)
    assert quick.val_mask(2**64 - 1)[::2, ::2].tolist() == [
        [1, 1, 0, 1],
        [1, 0, 1, 0],
        [0, 1, 1, 1],
        [1, 0, 0, 1],
    ]


def test_seeded_determinism() -> None:
    gen = MaskGenerator()
    assert np.array_equal(gen(1, 2, 3), gen(1, 2, 3))
    assert np.array_equal(gen.val_mask(12345), MaskGenerator().val_mask(12345))
    assert gen(1, 2, 3).tobytes() == MaskGenerator()(1, 2, 3).tobytes()
    # a copy in another process (DataLoader workers) makes the same masks
    clone = pickle.loads(pickle.dumps(gen))
    assert clone == gen and hash(clone) == hash(gen)
    assert clone(1, 2, 3).tobytes() == gen(1, 2, 3).tobytes()
    assert repr(gen) == repr(MaskGenerator()) and "plan" not in repr(gen)


def test_numpy_and_python_integers_agree() -> None:
    assert np.array_equal(PAPER(np.int64(7), np.uint64(3), 5), PAPER(7, 3, 5))
    key = np.uint64(2**64 - 1)  # manifest keys are uint64
    assert np.array_equal(PAPER.val_mask(key), PAPER(VAL_MASK_SEED, 2**64 - 1))


def test_returns_a_fresh_array_each_call() -> None:
    first = PAPER(1, 2, 3)
    expected = first.copy()
    first[:] = 7
    second = PAPER(1, 2, 3)
    assert np.array_equal(second, expected) and not np.shares_memory(first, second)


def test_bad_seed_words_raise() -> None:
    with pytest.raises(ValueError, match="non-negative integers"):
        PAPER(-1)
    with pytest.raises(ValueError, match="non-negative integers"):
        PAPER(2**70, -5)
    with pytest.raises(TypeError):
        PAPER(1.5)


def test_different_seeds_differ() -> None:
    gen = MaskGenerator()
    masks = {
        gen(seed, epoch, index).tobytes()
        for seed in (0, 1)
        for epoch in (0, 1)
        for index in range(5)
    }
    assert len(masks) == 20
    assert not np.array_equal(gen.val_mask(1), gen.val_mask(2))
    # word tuples that differ only in length, or beyond 64 bits, are different seeds too
    tuples = [(), (0,), (0, 0), (1, 2), (1, 2, 0), (0, 1, 2), (2**64,), (2**64, 0), (0, 2**64)]
    assert len({gen(*w).tobytes() for w in tuples}) == len(tuples)


def test_masks_cover_blocks_uniformly() -> None:
    gen = MaskGenerator(input_size=64, mask_patch_size=16, model_patch_size=4, mask_ratio=0.6)
    hits = sum(gen(0, 0, i)[::4, ::4].astype(int) for i in range(2000))  # (4, 4)
    assert np.allclose(hits / 2000, 10 / 16, atol=0.05)
    # paper grid: each block's frequency is 22/36 (standard error 0.008 at 4000 masks)
    hits = sum(PAPER(3, 0, i)[::8, ::8].astype(int) for i in range(4000))
    assert np.allclose(hits / 4000, 22 / 36, atol=0.035)


def test_every_block_subset_is_equally_likely() -> None:
    """3×3 blocks, 3 masked: 84 subsets, 100 expected draws each; χ² with 83 dof."""
    gen = MaskGenerator(input_size=48, mask_patch_size=16, model_patch_size=4, mask_ratio=0.3)
    assert gen.num_masked_blocks == 3
    subsets = list(itertools.combinations(range(9), 3))
    counts = dict.fromkeys(subsets, 0)
    draws = 100 * len(subsets)
    for i in range(draws):
        counts[tuple(np.flatnonzero(gen(11, 0, i)[::4, ::4]))] += 1
    chi2 = sum((c - 100) ** 2 / 100 for c in counts.values())
    assert 40 < chi2 < 140, chi2  # mean 83, sd 12.9: both tails beyond 3.3 sd


def _cross_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(36, 36) Pearson correlations between each block of ``a`` and each block of ``b``."""
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    return a.T @ b / len(a)


@pytest.mark.parametrize(
    "pair",
    [
        lambda i: ((5, 0, i), (5, 0, i + 1)),  # consecutive sample indices
        lambda i: ((5, i, 7), (5, i + 1, 7)),  # consecutive epochs
        lambda i: ((i, 0, 7), (i + 1, 0, 7)),  # consecutive seeds
        lambda i: ((VAL_MASK_SEED, i), (VAL_MASK_SEED, i | 2**63)),  # keys: top bit
    ],
    ids=["index", "epoch", "seed", "key-top-bit"],
)
def test_neighbouring_seed_words_give_independent_masks(
    pair: Callable[[int], tuple[tuple[int, ...], tuple[int, ...]]],
) -> None:
    n, k = 36, 22
    pairs = [pair(i) for i in range(3000)]
    a = np.stack([PAPER(*x)[::8, ::8].ravel() for x, _ in pairs]).astype(float)
    b = np.stack([PAPER(*y)[::8, ::8].ravel() for _, y in pairs]).astype(float)
    overlap = (a * b).sum(1)  # blocks masked in both
    assert overlap.max() < k  # no two neighbours are identical
    # independent uniform subsets: hypergeometric overlap, mean k²/n = 13.44, sd 1.45
    assert abs(overlap.mean() - k * k / n) < 0.15
    assert abs(overlap.std() - 1.446) < 0.15
    # no block of one mask predicts any block of the other (standard error 0.018)
    assert np.abs(_cross_correlation(a, b)).max() < 0.09


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"input_size": 192, "mask_patch_size": 30},
            r"mask_patch_size: must divide image_size 192, got 30",
        ),
        (
            {"mask_patch_size": 32, "model_patch_size": 5},
            r"mask_patch_size: must be a multiple of the model's patch size 5, got 32",
        ),
        ({"mask_ratio": 1.0}, r"mask_ratio: must be in \(0, 1\), got 1.0"),
        ({"mask_ratio": 0.0}, r"mask_ratio: must be in \(0, 1\), got 0.0"),
    ],
)
def test_bad_sizes_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(MaskConfigError, match=message):
        MaskGenerator(**kwargs)
    assert MaskConfigError.exit_code == 2
