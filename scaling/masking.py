"""SimMIM random block masking, seeded explicitly (never a global RNG).

For a 192 px image, 32 px mask patches and a model patch of 4 px, the image is a
6×6 grid of mask blocks; exactly ``ceil(ratio · 36)`` blocks are masked (22 at
ratio 0.6) and the block mask is upsampled ×8 to the 48×48 token grid that the
encoder sees. Every mask is a pure function of its seed words, so a sample's
mask is the same on every machine, worker count and rerun.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Validation masks are seeded by (VAL_MASK_SEED, image key) so that every cell,
# model and rerun scores the same pixels of the same image.
VAL_MASK_SEED = 20230101


class MaskConfigError(ValueError):
    exit_code = 2


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
        if self.input_size % self.mask_patch_size:
            raise MaskConfigError(
                f"mask_patch_size: {self.mask_patch_size} must divide the image size "
                f"{self.input_size}"
            )
        if self.mask_patch_size % self.model_patch_size:
            raise MaskConfigError(
                f"mask_patch_size: {self.mask_patch_size} must be a multiple of the model's "
                f"patch size {self.model_patch_size}"
            )
        if not 0.0 < self.mask_ratio < 1.0:
            raise MaskConfigError(f"mask_ratio: must be in (0, 1), got {self.mask_ratio}")

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
        rng = np.random.default_rng([int(w) for w in seed_words])
        n = self.blocks_per_side
        blocks = np.zeros(n * n, dtype=np.uint8)
        blocks[rng.permutation(n * n)[: self.num_masked_blocks]] = 1
        blocks = blocks.reshape(n, n)
        return blocks.repeat(self.scale, axis=0).repeat(self.scale, axis=1)

    def val_mask(self, key: int) -> np.ndarray:
        """The fixed validation mask of the image whose manifest ``key`` is given."""
        return self(VAL_MASK_SEED, int(key))
