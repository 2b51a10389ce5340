"""Pre-training and validation data: manifest + data root → batches of images and masks.

Public API (all keyword-only):

- ``build_pretrain_loader(manifest=, root=, image_size=, mask=, batch_size=, seed=,
  num_workers=, start_step=0, ...)`` → :class:`~scaling.data.manifest.CheckedLoader`
  yielding ``(images, masks)`` forever (or until ``end_step``): ``images`` uint8
  (B, 3, S, S), ``masks`` uint8 (B, S/p, S/p) with 1 = masked token, ``B`` the
  per-rank batch size. RandomResizedCrop (scale 0.67–1, ratio 3/4–4/3), a horizontal
  flip and the SimMIM mask; every random decision of a sample comes from generators
  seeded by ``(seed, epoch, index)`` (:class:`~scaling.data.sampler.StepSampler` decides
  which ``(epoch, index)`` pairs make step ``k``), so a batch is a pure function of
  ``(seed, step)`` whatever the worker count, and resuming at ``start_step=k`` is exact.
- ``build_val_loader(manifest=, root=, image_size=, mask=, batch_size=, num_workers=,
  limit=None)`` → ``(images, masks)`` in a fixed order: the central square of each
  image resized to S (resize-shorter-side + center crop), no flip, and the fixed mask
  ``mask.val_mask(key)`` of the image, so values compare across cells and reruns.
  ``limit`` keeps the ``limit`` images with the smallest ``key`` (a stable,
  pseudo-random subset; smaller limits are subsets of larger ones). From files, rank
  ``r`` of ``world_size`` takes every ``world_size``-th image.
- ``normalize(images, device)`` → float32 (B, 3, S, S) with ImageNet mean/std.

Both loaders take ``packed=`` (a pack made by ``mimscale subsets pack``, a folder or a
URI: images are read from its shards, the pre-training order is the pack's shard-aware
epoch order with windows of ``shard_window`` blocks, validation runs in pack order with
each rank taking a contiguous run; see :mod:`scaling.data.source`) and ``decode=``
(``fast`` or ``exact``: :data:`scaling.data.decode.DECODE_MODES`).

Images leave the workers as uint8 and are normalized on the device in the training
step (``normalize``): ToTensor + Normalize per image in the workers costs about as
much CPU as the resize, and would move 4× the bytes to the GPU. Decoding is in
:mod:`scaling.data.decode` (libjpeg-turbo, reduced-size DCT when the crop allows). A
corrupt or missing image is replaced by the next index and counted; too many stop the
run with :class:`~scaling.data.manifest.DataError` (see :mod:`scaling.data.manifest`). The
returned loader has ``batch_sampler``, ``num_bad_images`` and ``close()`` (stops the
persistent workers at once). Loaders pin memory only when CUDA is available, and have
their own torch generator so that starting an iteration never draws from the global
torch RNG (which would break exact resume of dropout and drop path).
Fine-tuning data is in :mod:`scaling.data.finetune`.
"""

from __future__ import annotations

import functools
import os
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from scaling.data.decode import (
    EncodedImage,
    center_square_box,
    crop_function,
    random_resized_crop_box,
)
from scaling.data.manifest import (
    BadImageCounter,
    BadReport,
    CheckedLoader,
    DataError,
    Manifest,
    collate,
    load_with_replacement,
    read_manifest,
)
from scaling.data.masking import MaskGenerator
from scaling.data.sampler import StepSampler
from scaling.data.source import ImageSource, PackSource, open_source

__all__ = [
    "DataError",
    "PretrainDataset",
    "ValDataset",
    "build_pretrain_loader",
    "build_val_loader",
    "normalize",
    "read_manifest",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PathLike = str | os.PathLike[str]


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The crop-and-flip generator of one sample: Mersenne Twister keyed by all three words.

    Seeding it costs a few microseconds, against ~100 µs for numpy's SeedSequence, and
    its stream is unrelated to the mask's (SHAKE-128 of the same words,
    :mod:`scaling.data.masking`).
    """
    return random.Random((seed << 128) | (epoch << 64) | index)


class PretrainDataset(Dataset):
    """Random crops, flips and masks; items are ``(epoch, index)`` pairs."""

    def __init__(
        self,
        source: ImageSource,
        *,
        image_size: int,
        mask: MaskGenerator,
        seed: int,
        crop_scale: tuple[float, float] = (0.67, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        decode: str = "fast",
    ) -> None:
        _check_mask(mask, image_size)
        if seed < 0:
            raise ValueError(f"seed: must be ≥ 0, got {seed}")
        self.source, self.manifest, self.crop = source, source.manifest, crop_function(decode)
        self.size, self.mask, self.seed = (image_size, image_size), mask, seed
        self.crop_scale, self.crop_ratio = crop_scale, crop_ratio

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, BadReport]:
        epoch, index = item

        def load(j: int, data: bytes | memoryview) -> torch.Tensor:
            rng = sample_rng(self.seed, epoch, j)
            image = EncodedImage(data)
            box = random_resized_crop_box(
                rng, image.height, image.width, self.crop_scale, self.crop_ratio
            )
            return self.crop(image, box, self.size, flip=rng.random() < 0.5)

        image, report = load_with_replacement(self.source, index, load)
        return image, torch.from_numpy(self.mask(self.seed, epoch, index)), report


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
        _check_mask(mask, image_size)
        self.source, self.manifest, self.crop = source, source.manifest, crop_function(decode)
        self.size, self.mask = (image_size, image_size), mask
        self.indices = np.arange(len(self.manifest)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, BadReport]:
        index = int(self.indices[i])

        def load(j: int, data: bytes | memoryview) -> torch.Tensor:
            image = EncodedImage(data)
            return self.crop(image, center_square_box(image.height, image.width), self.size)

        image, report = load_with_replacement(self.source, index, load)
        mask = self.mask.val_mask(int(self.manifest.keys[index]))
        return image, torch.from_numpy(mask), report


def build_pretrain_loader(
    *,
    manifest: PathLike | Manifest,
    root: PathLike,
    image_size: int,
    mask: MaskGenerator,
    batch_size: int,
    seed: int,
    num_workers: int,
    start_step: int = 0,
    end_step: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    crop_scale: tuple[float, float] = (0.67, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_bad_fraction: float = 0.001,
    drop_last: bool = True,
    packed: PathLike | None = None,
    decode: str = "fast",
    shard_window: int = 4,
) -> CheckedLoader:
    """Pre-training batches ``(images uint8 (B,3,S,S), masks uint8 (B,S/p,S/p))``, step by step.

    ``batch_size`` is per rank; step ``k`` of rank ``r`` is the ``r``-th slice of the
    ``k``-th global batch. ``loader.batch_sampler`` is the :class:`StepSampler`
    (``steps_per_epoch``, ``epochs_seen(step)``). ``packed``: a pack holding the
    manifest's images (folder or URI; ``root`` is then not read) and read in its
    shard-aware epoch order with windows of ``shard_window`` blocks
    (:mod:`scaling.data.source`). ``decode``: ``fast`` or ``exact``
    (:data:`~scaling.data.decode.DECODE_MODES`).
    """
    m = open_manifest(manifest)
    source = open_source(m, root, packed, window=shard_window)
    dataset = PretrainDataset(
        source, image_size=image_size, mask=mask, seed=seed,
        crop_scale=crop_scale, crop_ratio=crop_ratio, decode=decode,
    )  # fmt: skip
    sampler = StepSampler(
        len(m), batch_size=batch_size, seed=seed, start_step=start_step, end_step=end_step,
        rank=rank, world_size=world_size, drop_last=drop_last, order=source.epoch_order(seed),
    )  # fmt: skip
    loader = data_loader(dataset, batch_sampler=sampler, num_workers=num_workers, seed=seed)
    return CheckedLoader(loader, BadImageCounter(m, max_bad_fraction))


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
) -> CheckedLoader:
    """Validation batches ``(images, masks)`` in a fixed order; the ranks split the
    images (see :func:`eval_indices`), so summed losses all-reduce to the loss of all.
    ``packed`` and ``decode`` as for :func:`build_pretrain_loader`."""
    m = open_manifest(manifest)
    source = open_source(m, root, packed)
    indices = eval_indices(m, limit=limit, rank=rank, world_size=world_size, source=source)
    dataset = ValDataset(source, image_size=image_size, mask=mask, indices=indices, decode=decode)
    loader = data_loader(dataset, batch_size=batch_size, num_workers=num_workers, seed=0)
    return CheckedLoader(loader, BadImageCounter(m, max_bad_fraction))


def normalize(
    images: torch.Tensor, device: torch.device | str | None = None, *, channels_last: bool = False
) -> torch.Tensor:
    """uint8 (B, 3, H, W) → float32 normalized with ImageNet mean/std, on ``device``.

    Call it in the training step, after the loader: ``x = normalize(images, device)``.
    """
    x = images.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mean, std = _mean_std(x.device)
    return x.float().sub_(mean).div_(std)


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std × 255 as (1, 3, 1, 1) tensors on ``device``, made once:
    building them per batch would copy from pageable host memory, which waits for
    the GPU to finish its queued work."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).mul_(255).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).mul_(255).view(1, 3, 1, 1)
    return mean, std


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


def data_loader(dataset: Dataset, *, num_workers: int, seed: int, **kwargs: Any) -> DataLoader:
    """A DataLoader with our collate, persistent workers and its own generator."""
    return DataLoader(
        dataset,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def open_manifest(manifest: PathLike | Manifest) -> Manifest:
    """Read a manifest (or take a read one); :func:`open_source` finds its images."""
    return manifest if isinstance(manifest, Manifest) else read_manifest(manifest)


def _check_mask(mask: MaskGenerator, image_size: int) -> None:
    if mask.input_size != image_size:
        raise ValueError(
            f"image_size: {image_size} differs from the mask generator's input_size "
            f"{mask.input_size}"
        )
