"""``decode="gpu"``: JPEG crops decoded on the accelerator (nvJPEG via torchvision).

The data-loader workers do everything but the decode: they read the bytes, parse the
header and draw the crop box and flip from the same per-sample generator as the CPU
modes (so a sample's box is the same in every mode), and send the *encoded* bytes. The
main process then decodes the whole batch with one ``torchvision.io.decode_jpeg(...,
device=)`` call and crops, resizes (torch's antialiased bilinear, in float, rounded)
and flips on the device: a full-size decode — no reduced DCT — so the pixels are those
of the exact mode up to the decoder's IDCT and the resize kernel (±1–2 grey levels).

Images that are not JPEGs (PNG, WebP, CMYK) are decoded in the worker (PIL) and sent
as pixels. A JPEG whose header parses but whose body nvJPEG rejects is decoded by PIL
in the main process; one that PIL rejects too raises :class:`DataError` (the batch was
drawn already, so it cannot be replaced like a bad image of the CPU modes: run
``mimscale subsets verify --decode`` on the manifest, or train with ``decode="fast"``).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from scaling.data.decode import Box, EncodedImage
from scaling.data.manifest import BadReport, CheckedLoader, DataError


@dataclass
class EncodedSample:
    """One sample as a worker sends it: bytes (or pixels), its crop box and flip."""

    data: torch.Tensor
    """uint8: the encoded JPEG (1-D), or decoded pixels (3, H, W) for other formats."""
    box: Box
    flip: bool
    where: str
    """The image, for error messages."""


def encode_sample(image: EncodedImage, box: Box, flip: bool, where: str) -> EncodedSample:
    """What a worker sends for ``image`` (its bytes, or its pixels when not a JPEG)."""
    if image.is_jpeg:
        data = torch.frombuffer(bytearray(image.data), dtype=torch.uint8)
    else:
        data = torch.from_numpy(image.decode()).permute(2, 0, 1).contiguous()
    return EncodedSample(data, box, flip, where)


@dataclass
class EncodedBatch:
    """A batch of :class:`EncodedSample` and the output size; decoded by :func:`decode_batch`."""

    samples: list[EncodedSample]
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.samples)

    def pin_memory(self) -> EncodedBatch:  # DataLoader(pin_memory=True) calls it
        return self


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torchvision ≥ 0.29 warns on every decode that torchcodec will take its decoders
    over; said once here instead (move to torchcodec when torchvision drops them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        yield


def _decode_all(samples: Sequence[EncodedSample], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    jpegs = [i for i, s in enumerate(samples) if s.data.dim() == 1]
    out: list[torch.Tensor | None] = [
        None if s.data.dim() == 1 else s.data.to(device) for s in samples
    ]
    if jpegs:
        try:
            with _quiet():
                decoded = decode_jpeg(
                    [samples[i].data for i in jpegs], mode=ImageReadMode.RGB, device=device
                )
        except RuntimeError:  # one bad body fails the batch: decode them one by one
            decoded = [_decode_one(samples[i], device) for i in jpegs]
        for i, image in zip(jpegs, decoded, strict=True):
            out[i] = image
    return out  # type: ignore[return-value]


def _decode_one(sample: EncodedSample, device: torch.device) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        with _quiet():
            return decode_jpeg(sample.data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        pass
    try:
        image = Image.open(io.BytesIO(sample.data.numpy().tobytes())).convert("RGB")
    except Exception as err:
        raise DataError(
            f"{sample.where}: the GPU decoder and PIL both reject this JPEG ({err}); it cannot "
            "be replaced once its batch is drawn: run `mimscale subsets verify --decode`, or "
            'train with decode="fast"'
        ) from None
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).to(device)


def crop_resize(image: torch.Tensor, box: Box, size: tuple[int, int], flip: bool) -> torch.Tensor:
    """Crop ``box`` of a (3, H, W) uint8 image, resize (antialiased bilinear), flip."""
    top, left, height, width = box
    region = image[:, top : top + height, left : left + width].float()[None]
    out = F.interpolate(region, size=size, mode="bilinear", antialias=True, align_corners=False)
    out = out[0].round_().clamp_(0, 255).to(torch.uint8)
    return out.flip(-1) if flip else out


def decode_batch(batch: EncodedBatch, device: torch.device | str) -> torch.Tensor:
    """(B, 3, h, w) uint8 on ``device``: every sample decoded, cropped, resized, flipped."""
    device = torch.device(device)
    images = _decode_all(batch.samples, device)
    return torch.stack(
        [
            crop_resize(im, s.box, batch.size, s.flip)
            for im, s in zip(images, batch.samples, strict=True)
        ]
    )


def collate_encoded(
    items: Sequence[tuple[EncodedSample, Any, BadReport]], size: tuple[int, int]
) -> tuple[EncodedBatch, Any, BadReport]:
    """The workers' collate in gpu mode: samples stay encoded; targets are stacked."""
    targets = [t for _, t, _ in items]
    y = torch.stack(targets) if isinstance(targets[0], torch.Tensor) else torch.tensor(targets)
    return EncodedBatch([s for s, _, _ in items], size), y, [b for *_, r in items for b in r]


class DecodedLoader:
    """A :class:`CheckedLoader` of encoded batches, yielding them decoded on ``device``."""

    def __init__(self, loader: CheckedLoader, device: torch.device | str) -> None:
        self.checked, self.device = loader, torch.device(device)

    def __getattr__(self, name: str) -> Any:  # batch_sampler, dataset, num_bad_images, close
        return getattr(self.checked, name)

    def __len__(self) -> int:
        return len(self.checked)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        for x, y in self.checked:
            yield decode_batch(x, self.device), y
