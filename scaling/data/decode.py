"""Image decoding and cropping: libjpeg-turbo with reduced-size DCT, PIL for the rest.

Two decode modes (:data:`DECODE_MODES`). ``fast``: the pre-training crop is chosen
from the JPEG header *before* decoding, so the
decoder can scale by 1/2, 1/4 or 1/8 in the inverse DCT whenever the crop, at that
scale, still covers the output size; the crop is then resized with torch's uint8
antialiased bilinear kernel (the same filter as PIL's, several times faster).
Anything simplejpeg rejects — PNG, WebP, CMYK JPEGs, JPEGs with recoverable
errors — goes through PIL. ``exact``: a full decode with PIL and the crop resized by
PIL's bilinear filter, which is what torchvision's ``RandomResizedCrop`` does to the PIL
images of the released SimMIM code. The result is always RGB. An image in pixel form
(a pack made with ``--pixels``, :mod:`scaling.data.pixels`) gives the same pixels in both
modes without decoding.

A crop box is ``(top, left, height, width)`` in pixels of the full-size image.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image

from scaling.data.pixels import FACTORS, PIL_LEVEL, PixelImage, is_pixels, pack_levels

Box = tuple[int, int, int, int]

DCT_SCALES = (8, 4, 2)
"""Reduction factors of the inverse DCT that we use, largest first."""


class EncodedImage:
    """One encoded image: its size from the header, and decoding on demand."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data
        self._pil: Image.Image | None = None
        self._pixels: PixelImage | None = None
        self.is_jpeg = False
        """Encoded as a JPEG (what nvJPEG decodes)."""
        if is_pixels(data):
            self._pixels = PixelImage(data)
            self.height, self.width = self._pixels.height, self._pixels.width
            return
        try:
            self.height, self.width, _, _ = simplejpeg.decode_jpeg_header(data)
            self.is_jpeg = True
        except ValueError:
            self._pil = Image.open(io.BytesIO(data))  # lazy: reads the header only
            self.width, self.height = self._pil.size

    @property
    def scalable(self) -> bool:
        """Decodes at 1/2, 1/4, 1/8 size (a JPEG, or pixels that hold those decodes)."""
        return self.is_jpeg or self._pixels is not None

    def decode(self, factor: int = 1) -> np.ndarray:
        """(H, W, 3) uint8 RGB; a JPEG is reduced by ``factor`` (1, 2, 4, 8) in the IDCT.
        Pixels in pixel form are a read-only view."""
        if self._pixels is not None:
            return self._pixels.decode(factor)
        if self.is_jpeg:
            try:
                # The exact ceil sizes make simplejpeg pick the 1/factor scale, not n/8.
                return simplejpeg.decode_jpeg(
                    self.data,
                    colorspace="RGB",
                    min_height=math.ceil(self.height / factor),
                    min_width=math.ceil(self.width / factor),
                )
            except ValueError:  # CMYK, recoverable corruption: PIL decides
                self._pil = Image.open(io.BytesIO(self.data))
        assert self._pil is not None
        return np.array(self._pil.convert("RGB"))  # a writable copy, as torch wants

    def to_pil(self) -> Image.Image:
        """The full-size image as an RGB PIL image (for timm's transforms)."""
        return Image.fromarray(self.decode())

    def crop_resize(self, box: Box, size: tuple[int, int], *, flip: bool = False) -> torch.Tensor:
        """Crop ``box``, resize to ``size`` (h, w) and optionally mirror: (3, h, w) uint8."""
        top, left, box_h, box_w = box
        out_h, out_w = size
        factor = dct_factor(box_h, box_w, out_h, out_w) if self.scalable else 1
        pixels = self.decode(factor)
        if pixels.shape[:2] == (self.height, self.width):  # PIL fallback: full size
            factor = 1
        # The box on the decoded grid: the IDCT scales by exactly 1/factor (the last
        # row and column may be partial), so snap to the nearest decoded pixel.
        y0, x0 = _snap(top, factor), _snap(left, factor)
        y1 = max(y0 + 1, min(pixels.shape[0], _snap(top + box_h, factor)))
        x1 = max(x0 + 1, min(pixels.shape[1], _snap(left + box_w, factor)))
        if pixels.flags.writeable:
            region = torch.from_numpy(pixels).permute(2, 0, 1)[:, y0:y1, x0:x1]  # a view
        else:  # stored pixels: the crop copied (channels-last, as the resize wants it)
            region = torch.from_numpy(np.array(pixels[y0:y1, x0:x1])).permute(2, 0, 1)
        out = F.interpolate(region[None], size=size, mode="bilinear", antialias=True)[0]
        if flip:
            out = out.flip(-1)
        return out.contiguous()

    def crop_resize_exact(
        self, box: Box, size: tuple[int, int], *, flip: bool = False
    ) -> torch.Tensor:
        """The released SimMIM transform of ``box``: a full-size PIL decode, then
        torchvision's ``RandomResizedCrop`` on a PIL image (crop, bilinear resize) and
        ``RandomHorizontalFlip``: (3, h, w) uint8, pixel for pixel what it gives."""
        top, left, box_h, box_w = box
        if self._pixels is not None:
            image = self._pixels.exact()
        else:
            image = Image.open(io.BytesIO(self.data)).convert("RGB")
        image = image.crop((left, top, left + box_w, top + box_h))
        image = image.resize((size[1], size[0]), Image.BILINEAR)
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


DECODE_MODES = {
    "fast": EncodedImage.crop_resize,
    "exact": EncodedImage.crop_resize_exact,
}
"""How a crop becomes pixels: ``fast`` (reduced-size DCT decode, torch's antialiased
bilinear resize) or ``exact`` (full decode and PIL's bilinear resize, as the released
SimMIM code). Fast mode differs by a few grey levels on average."""


GPU_MODE = "gpu"
"""Decoded on the accelerator in the main process (:mod:`scaling.data.gpu_decode`)."""


def crop_function(decode: str):
    """The crop-and-resize of decode mode ``decode`` (None for ``gpu``: the workers send
    encoded bytes); ValueError listing the modes."""
    if decode == GPU_MODE:
        return None
    if decode not in DECODE_MODES:
        valid = ", ".join([*DECODE_MODES, GPU_MODE])
        raise ValueError(f"decode: unknown mode {decode!r}; valid: {valid}")
    return DECODE_MODES[decode]


def _snap(coordinate: int, factor: int) -> int:
    return (coordinate + factor // 2) // factor


def dct_factor(box_h: int, box_w: int, out_h: int, out_w: int) -> int:
    """Largest factor in (8, 4, 2) at which the box still covers the output; else 1."""
    for factor in DCT_SCALES:
        if box_h // factor >= out_h and box_w // factor >= out_w:
            return factor
    return 1


def read_image(path: str) -> EncodedImage:
    """Read a file's bytes; raises OSError for a missing file, ValueError-like for junk."""
    with open(path, "rb") as f:
        return EncodedImage(f.read())


def random_resized_crop_box(
    rng: random.Random,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> Box:
    """A RandomResizedCrop box (same distribution as torchvision's), drawn from ``rng``.

    Up to ten tries of an area fraction in ``scale`` and a log-uniform aspect ratio in
    ``ratio``; if none fits, the largest central box with the ratio clamped to the range.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_square_box(height: int, width: int) -> Box:
    """The largest central square: resize-shorter-side-then-center-crop, as one box."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def encode_pixels(data: bytes) -> bytes:
    """The pixel form of an encoded image (:mod:`scaling.data.pixels`); its own bytes
    when it does not decode (a bad image stays one)."""
    try:
        image = EncodedImage(data)
        full = image.decode(1)
        levels = {1: full}
        for factor in FACTORS[1:]:
            reduced = image.decode(factor) if image.is_jpeg else full
            if reduced.shape != full.shape or not np.array_equal(reduced, full):
                levels[factor] = reduced  # (not PIL's full-size fallback: that is level 1)
        exact = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception:  # the decoders raise many kinds; all mean "bad image"
        return data
    if not np.array_equal(exact, full):
        levels[PIL_LEVEL] = exact
    return pack_levels(image.height, image.width, levels)
