"""Shared pieces of the loaders: the DataLoader we build, manifest opening, decode-mode
plumbing (collate and the device decode of ``decode="gpu"``), argument checks."""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from scaling.data.decode import GPU_MODE
from scaling.data.gpu_decode import DecodedLoader, collate_encoded
from scaling.data.manifest import CheckedLoader, Manifest, collate, read_manifest
from scaling.data.masking import MaskGenerator

PathLike = str | os.PathLike[str]


def collate_for(decode: str, image_size: int) -> Any:
    if decode == GPU_MODE:
        return functools.partial(collate_encoded, size=(image_size, image_size))
    return collate


def decoded(loader: CheckedLoader, decode: str, device: Any) -> CheckedLoader | DecodedLoader:
    """The loader, decoding its batches on ``device`` in gpu mode (default: cuda)."""
    return DecodedLoader(loader, device or "cuda") if decode == GPU_MODE else loader


def data_loader(dataset: Dataset, *, num_workers: int, seed: int, **kwargs: Any) -> DataLoader:
    """A DataLoader with our collate, persistent workers and its own generator."""
    kwargs.setdefault("collate_fn", collate)
    return DataLoader(
        dataset,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def open_manifest(manifest: PathLike | Manifest) -> Manifest:
    """Read a manifest (or take a read one); :func:`open_source` finds its images."""
    return manifest if isinstance(manifest, Manifest) else read_manifest(manifest)


def check_mask(mask: MaskGenerator, image_size: int) -> None:
    if mask.input_size != image_size:
        raise ValueError(
            f"image_size: {image_size} differs from the mask generator's input_size "
            f"{mask.input_size}"
        )
