"""Fine-tuning data: timm's own augmentation, seeded per sample, and seeded Mixup/CutMix.

- ``build_finetune_loaders(train_manifest=, val_manifest=, root=, image_size=,
  batch_size=, seed=, num_workers=, start_step=0, ...)`` → ``FinetuneLoaders(train,
  val, num_classes)``. ``train`` yields ``(images float32 (B,3,S,S) normalized,
  labels int64 (B,))`` step by step from a :class:`~scaling.data.sampler.StepSampler`,
  augmented by ``timm.data.create_transform(is_training=True, ...)`` (RandomResizedCrop,
  flip, RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25, bicubic);
  ``val`` yields the same in manifest order with timm's eval transform (resize
  S/crop_pct, center crop S).
- ``build_mixup(mixup=, cutmix=, label_smoothing=, num_classes=, seed=)`` → a
  :class:`SeededMixup` (timm's ``Mixup``; call ``mix(images, labels, step=step)`` in
  the loop and train with ``timm.loss.SoftTargetCrossEntropy``) or ``None`` when both
  alphas are 0 (then use ``CrossEntropyLoss(label_smoothing=...)``).

Determinism: timm's transforms draw from Python's ``random`` (crop, RandAugment,
erasing boxes), torch's global RNG (flip, erasing noise) and, for AugMix, numpy's.
Each sample's transform runs inside :func:`seeded_rngs` ``(seed, epoch, index)``,
which seeds all three and restores their previous states afterwards, so samples are
reproducible across worker counts and resume, and the training loop's own global
RNG streams (dropout, drop path) are left untouched when ``num_workers=0``.
Mixup draws from numpy's global RNG; :class:`SeededMixup` seeds it per step the same way.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch
from timm.data import Mixup, create_transform
from torch.utils.data import Dataset

from scaling.data.decode import EncodedImage
from scaling.data.loader import PathLike, data_loader, open_manifest
from scaling.data.manifest import (
    BadImageCounter,
    BadReport,
    CheckedLoader,
    DataError,
    Manifest,
    load_with_replacement,
)
from scaling.data.sampler import StepSampler
from scaling.data.source import ImageSource, open_source
from scaling.data.val import eval_indices


@contextmanager
def seeded_rngs(*words: int) -> Iterator[None]:
    """Seed ``random``, numpy's global RNG and torch's CPU RNG from ``words``; restore after."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(4)  # 4 × uint32
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(int.from_bytes(state.tobytes(), "little"))
        np.random.seed(state)
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class FinetuneDataset(Dataset):
    """Images through a timm transform, with labels.

    Training (``seed`` given): items are ``(epoch, index)`` pairs and each sample's
    transform is seeded by ``(seed, epoch, index)``. Evaluation (``seed=None``): items
    are positions in ``indices``.
    """

    def __init__(
        self,
        source: ImageSource,
        *,
        transform: Callable[[Any], torch.Tensor],
        seed: int | None = None,
        indices: np.ndarray | None = None,
    ) -> None:
        self.source, self.manifest = source, source.manifest
        self.transform, self.seed = transform, seed
        self.indices = np.arange(len(self.manifest)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int, BadReport]:
        if self.seed is None:
            epoch, index = -1, int(self.indices[item])
        else:
            epoch, index = item

        def load(j: int, data: bytes | memoryview) -> tuple[Any, int]:
            image = EncodedImage(data).to_pil()
            image.load()  # decode now: only reading and decoding errors mean "bad image"
            return image, j

        # The transform runs outside the replacement loop, so a transform bug raises
        # instead of being counted as a corrupt image.
        (image, j), report = load_with_replacement(self.source, index, load)
        label = int(self.manifest.labels[j])
        if self.seed is None:
            return self.transform(image), label, report
        with seeded_rngs(self.seed, epoch, j):
            return self.transform(image), label, report


class FinetuneLoaders(NamedTuple):
    train: CheckedLoader
    """Endless (or to ``end_step``) augmented training batches ``(images, labels)``."""
    val: CheckedLoader
    """Evaluation batches ``(images, labels)`` in a fixed order."""
    num_classes: int


def _check_labels(train_m: Manifest, val_m: Manifest) -> int:
    """The number of classes; the two manifests must share their class list."""
    if train_m.classes and val_m.classes and train_m.classes != val_m.classes:
        raise DataError(
            f"{val_m.source}: its class list ({len(val_m.classes)} classes) differs from that "
            f"of {train_m.source} ({len(train_m.classes)}); fine-tune labels would not match"
        )
    num_classes = train_m.num_classes
    if int(val_m.labels.max()) >= num_classes:
        raise DataError(f"{val_m.source}: labels up to {val_m.labels.max()} ≥ {num_classes}")
    return num_classes


def build_finetune_loaders(
    *,
    train_manifest: PathLike | Manifest,
    val_manifest: PathLike | Manifest,
    root: PathLike,
    image_size: int,
    batch_size: int,
    seed: int,
    num_workers: int,
    start_step: int = 0,
    end_step: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    val_batch_size: int | None = None,
    val_limit: int | None = None,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    color_jitter: float = 0.4,
    re_prob: float = 0.25,
    interpolation: str = "bicubic",
    crop_pct: float = 0.875,
    max_bad_fraction: float = 0.001,
    packed: PathLike | None = None,
    shard_window: int = 4,
) -> FinetuneLoaders:
    """Training and evaluation loaders with timm's transforms (SimMIM's fine-tune recipe).

    ``color_jitter`` is ignored by timm while RandAugment is on. ``val`` is split by
    rank like :func:`~scaling.data.pretrain.build_val_loader`. ``packed``: a pack
    holding both manifests' images, read as in
    :func:`~scaling.data.pretrain.build_pretrain_loader`.
    """
    train_m, val_m = open_manifest(train_manifest), open_manifest(val_manifest)
    train_src = open_source(train_m, root, packed, window=shard_window)
    val_src = open_source(val_m, root, packed)
    num_classes = _check_labels(train_m, val_m)
    train_tf = create_transform(
        input_size=image_size, is_training=True, auto_augment=auto_augment,
        color_jitter=color_jitter, re_prob=re_prob, re_mode="pixel", re_count=1,
        interpolation=interpolation,
    )  # fmt: skip
    val_tf = create_transform(
        input_size=image_size, is_training=False, interpolation=interpolation, crop_pct=crop_pct
    )
    sampler = StepSampler(
        len(train_m), batch_size=batch_size, seed=seed, start_step=start_step,
        end_step=end_step, rank=rank, world_size=world_size,
        order=train_src.epoch_order(seed),
    )  # fmt: skip
    train_ds = FinetuneDataset(train_src, transform=train_tf, seed=seed)
    train = data_loader(train_ds, batch_sampler=sampler, num_workers=num_workers, seed=seed)
    indices = eval_indices(val_m, limit=val_limit, rank=rank, world_size=world_size, source=val_src)
    val_ds = FinetuneDataset(val_src, transform=val_tf, indices=indices)
    val = data_loader(
        val_ds, batch_size=val_batch_size or batch_size, num_workers=num_workers, seed=0
    )
    return FinetuneLoaders(
        CheckedLoader(train, BadImageCounter(train_m, max_bad_fraction)),
        CheckedLoader(val, BadImageCounter(val_m, max_bad_fraction)),
        num_classes,
    )


class SeededMixup(Mixup):
    """timm's Mixup/CutMix whose random draws are a pure function of ``(seed, step, rank)``."""

    def __init__(self, *, seed: int, rank: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed, self.rank = seed, rank

    def __call__(
        self, x: torch.Tensor, target: torch.Tensor, *, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch in place (its size must be even); returns ``(x, soft_targets)``."""
        with seeded_rngs(self.seed, step, self.rank):
            return super().__call__(x, target)


def build_mixup(
    *,
    mixup: float,
    cutmix: float,
    label_smoothing: float,
    num_classes: int,
    seed: int = 0,
    rank: int = 0,
) -> SeededMixup | None:
    """Mixup (alpha ``mixup``) and CutMix (alpha ``cutmix``), switching 50/50 per batch.

    Returns ``None`` when both are 0: then train with
    ``CrossEntropyLoss(label_smoothing=label_smoothing)`` on the hard labels.
    """
    if mixup <= 0 and cutmix <= 0:
        return None
    return SeededMixup(
        seed=seed,
        rank=rank,
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )
