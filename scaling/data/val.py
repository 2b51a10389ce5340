"""Validation data: the central square of each image with its fixed mask, in a fixed order.

``build_val_loader`` (re-exported by :mod:`scaling.data.pretrain`) is described there.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from scaling.data.decode import EncodedImage, center_square_box, crop_function
from scaling.data.gpu_decode import encode_sample
from scaling.data.loader import (
    PathLike,
    check_mask,
    collate_for,
    data_loader,
    decoded,
    open_manifest,
)
from scaling.data.manifest import (
    BadImageCounter,
    BadReport,
    CheckedLoader,
    Manifest,
    load_with_replacement,
)
from scaling.data.masking import MaskGenerator
from scaling.data.source import ImageSource, PackSource, open_source


class ValDataset(Dataset):
    """Central square resized to the image size, with each image's fixed validation mask."""

    def __init__(
        self,
        source: ImageSource,
        *,
        image_size: int,
        mask: MaskGenerator,
        indices: np.ndarray | None = None,
        decode: str = "fast",
    ) -> None:
        check_mask(mask, image_size)
        self.source, self.manifest, self.crop = source, source.manifest, crop_function(decode)
        self.size, self.mask = (image_size, image_size), mask
        self.indices = np.arange(len(self.manifest)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, BadReport]:
        index = int(self.indices[i])

        def load(j: int, data: bytes | memoryview) -> torch.Tensor:
            image = EncodedImage(data)
            box = center_square_box(image.height, image.width)
            if self.crop is None:  # decode="gpu": the main process decodes
                return encode_sample(image, box, False, self.source.where(j))
            return self.crop(image, box, self.size)

        image, report = load_with_replacement(self.source, index, load)
        mask = self.mask.val_mask(int(self.manifest.keys[index]))
        return image, torch.from_numpy(mask), report


def build_val_loader(
    *,
    manifest: PathLike | Manifest,
    root: PathLike,
    image_size: int,
    mask: MaskGenerator,
    batch_size: int,
    num_workers: int,
    limit: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    max_bad_fraction: float = 0.001,
    packed: PathLike | None = None,
    decode: str = "fast",
    device: torch.device | str | None = None,
) -> CheckedLoader:
    """Validation batches ``(images, masks)`` in a fixed order; the ranks split the
    images (see :func:`eval_indices`), so summed losses all-reduce to the loss of all.
    ``packed`` and ``decode`` as for :func:`build_pretrain_loader`."""
    m = open_manifest(manifest)
    source = open_source(m, root, packed, decode=decode)
    indices = eval_indices(m, limit=limit, rank=rank, world_size=world_size, source=source)
    dataset = ValDataset(source, image_size=image_size, mask=mask, indices=indices, decode=decode)
    loader = data_loader(
        dataset, batch_size=batch_size, num_workers=num_workers, seed=0,
        collate_fn=collate_for(decode, image_size),
    )  # fmt: skip
    return decoded(CheckedLoader(loader, BadImageCounter(m, max_bad_fraction)), decode, device)


def eval_indices(
    manifest: Manifest,
    *,
    limit: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    source: ImageSource | None = None,
) -> np.ndarray:
    """Manifest rows to evaluate: all, or the ``limit`` smallest keys; split by rank.

    From files, rank ``r`` takes every ``world_size``-th row in manifest order; from a
    pack, the rows in pack order are cut into ``world_size`` contiguous runs, so each
    rank reads its own blocks once.
    """
    if limit is not None and limit < len(manifest):
        if limit < 1:
            raise ValueError(f"limit: must be ≥ 1, got {limit}")
        indices = np.sort(np.argsort(manifest.keys, kind="stable")[:limit])
    else:
        indices = np.arange(len(manifest))
    if isinstance(source, PackSource):
        return np.array_split(source.eval_order(indices), world_size)[rank]
    return indices[rank::world_size]
