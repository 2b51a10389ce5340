"""SimMIM block masks: exact statistics, seeded determinism, size errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scaling.masking import MaskConfigError, MaskGenerator


def test_paper_mask_statistics_are_exact() -> None:
    gen = MaskGenerator(input_size=192, mask_patch_size=32, model_patch_size=4, mask_ratio=0.6)
    assert (gen.blocks_per_side, gen.scale, gen.num_masked_blocks) == (6, 8, 22)
    assert gen.num_masked_blocks == math.ceil(0.6 * 36)
    for sample in range(20):
        mask = gen(7, 0, sample)
        assert mask.shape == (48, 48) and mask.dtype == np.uint8
        blocks = mask[::8, ::8]  # (6, 6): one value per 32 px block
        assert blocks.sum() == 22
        assert np.array_equal(mask, np.kron(blocks, np.ones((8, 8), dtype=np.uint8)))


def test_seeded_determinism() -> None:
    gen = MaskGenerator()
    assert np.array_equal(gen(1, 2, 3), gen(1, 2, 3))
    assert np.array_equal(gen.val_mask(12345), MaskGenerator().val_mask(12345))
    assert gen(1, 2, 3).tobytes() == MaskGenerator()(1, 2, 3).tobytes()


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


def test_masks_cover_blocks_uniformly() -> None:
    gen = MaskGenerator(input_size=64, mask_patch_size=16, model_patch_size=4, mask_ratio=0.6)
    hits = sum(gen(0, 0, i)[::4, ::4].astype(int) for i in range(2000))  # (4, 4)
    assert np.allclose(hits / 2000, 10 / 16, atol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"input_size": 192, "mask_patch_size": 30},
            r"mask_patch_size: 30 must divide the image size 192",
        ),
        (
            {"mask_patch_size": 32, "model_patch_size": 5},
            r"must be a multiple of the model's patch size 5",
        ),
        ({"mask_ratio": 1.0}, r"mask_ratio: must be in \(0, 1\), got 1.0"),
        ({"mask_ratio": 0.0}, r"mask_ratio: must be in \(0, 1\), got 0.0"),
    ],
)
def test_bad_sizes_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(MaskConfigError, match=message):
        MaskGenerator(**kwargs)
    assert MaskConfigError.exit_code == 2
