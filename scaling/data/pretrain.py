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
(``fast`` or ``exact``: :data:`scaling.data.decode.DECODE_MODES`; ``gpu``: the workers
send encoded bytes and the loader decodes each batch on ``device``,
:mod:`scaling.data.gpu_decode`).

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
import random

import torch
from torch.utils.data import Dataset

from scaling.data.decode import (
    EncodedImage,
    crop_function,
    random_resized_crop_box,
)
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
    DataError,
    Manifest,
    load_with_replacement,
    read_manifest,
)
from scaling.data.masking import MaskGenerator
from scaling.data.sampler import StepSampler
from scaling.data.source import ImageSource, open_source
from scaling.data.val import ValDataset, build_val_loader

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
        check_mask(mask, image_size)
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
            flip = rng.random() < 0.5
            if self.crop is None:  # decode="gpu": the main process decodes
                return encode_sample(image, box, flip, self.source.where(j))
            return self.crop(image, box, self.size, flip=flip)

        image, report = load_with_replacement(self.source, index, load)
        return image, torch.from_numpy(self.mask(self.seed, epoch, index)), report


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
    device: torch.device | str | None = None,
) -> CheckedLoader:
    """Pre-training batches ``(images uint8 (B,3,S,S), masks uint8 (B,S/p,S/p))``, step by step.

    ``batch_size`` is per rank; step ``k`` of rank ``r`` is the ``r``-th slice of the
    ``k``-th global batch. ``loader.batch_sampler`` is the :class:`StepSampler`
    (``steps_per_epoch``, ``epochs_seen(step)``). ``packed``: a pack holding the
    manifest's images (folder or URI; ``root`` is then not read) and read in its
    shard-aware epoch order with windows of ``shard_window`` blocks
    (:mod:`scaling.data.source`). ``decode``: ``fast``, ``exact``
    (:data:`~scaling.data.decode.DECODE_MODES`) or ``gpu`` (decoded on ``device``,
    default cuda, in this process: :mod:`scaling.data.gpu_decode`).
    """
    m = open_manifest(manifest)
    source = open_source(m, root, packed, window=shard_window, decode=decode)
    dataset = PretrainDataset(
        source, image_size=image_size, mask=mask, seed=seed,
        crop_scale=crop_scale, crop_ratio=crop_ratio, decode=decode,
    )  # fmt: skip
    sampler = StepSampler(
        len(m), batch_size=batch_size, seed=seed, start_step=start_step, end_step=end_step,
        rank=rank, world_size=world_size, drop_last=drop_last, order=source.epoch_order(seed),
    )  # fmt: skip
    loader = data_loader(
        dataset, batch_sampler=sampler, num_workers=num_workers, seed=seed,
        collate_fn=collate_for(decode, image_size),
    )  # fmt: skip
    return decoded(CheckedLoader(loader, BadImageCounter(m, max_bad_fraction)), decode, device)


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
