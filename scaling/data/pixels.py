"""Decoded images stored whole: the *pixel* form a pack holds with ``subsets pack --pixels``.

A JPEG costs ~1 ms of one core to decode at ImageNet size, the same ~1 ms at every one of
the hundreds or thousands of epochs a small subset is trained for. A pixel pack decodes
each image once, when packing, and keeps what the training transforms read: the
full-size RGB pixels of :meth:`EncodedImage.decode` and its reduced-size DCT decodes at
1/2, 1/4 and 1/8 (what ``decode = "fast"`` crops from), and, where PIL's full decode (what
``decode = "exact"`` crops from) differs from libjpeg-turbo's through simplejpeg, PIL's
too (:func:`scaling.data.decode.encode_pixels` makes the form). Every CPU decode mode
then sees *the same pixels* as from the file — a crop costs a copy and a resize — at ~9×
the bytes of the JPEG (~7× for ImageNet's; +33 % for the reduced sizes): it pays where a
subset fits the page cache or a local NVMe and is read for many epochs. ``decode =
"gpu"`` (nvJPEG) has nothing to decode in it and is refused.

One image, little-endian::

    b"MIMPIX\\x00\\x01"  height:u32  width:u32  count:u8
    count × (kind:u8  rows:u32  cols:u32)   kind: 1, 2, 4, 8 (the DCT factor), 0 (PIL's)
    the levels' RGB bytes, rows × cols × 3 each, in the order listed

An image that does not decode when packing is stored as its file's bytes, so training
counts it as a bad image as it would from the file.
"""

from __future__ import annotations

import struct

import numpy as np
from PIL import Image

MAGIC = b"MIMPIX\x00\x01"
_HEAD = struct.Struct("<8sIIB")
_LEVEL = struct.Struct("<BII")
PIL_LEVEL = 0
"""The kind of the level holding PIL's full decode where it differs from level 1."""
FACTORS = (1, 2, 4, 8)


def is_pixels(data: bytes | memoryview) -> bool:
    return bytes(data[: len(MAGIC)]) == MAGIC


def pack_levels(height: int, width: int, levels: dict[int, np.ndarray]) -> bytes:
    """One image's pixel form from its levels (kind → (rows, cols, 3) uint8)."""
    parts = [_HEAD.pack(MAGIC, height, width, len(levels))]
    parts += [_LEVEL.pack(kind, *pixels.shape[:2]) for kind, pixels in levels.items()]
    parts += [np.ascontiguousarray(pixels, dtype=np.uint8).tobytes() for pixels in levels.values()]
    return b"".join(parts)


class PixelImage:
    """The levels of one image in pixel form, as read-only (H, W, 3) uint8 views."""

    def __init__(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if len(view) < _HEAD.size:
            raise ValueError(f"pixel image: {len(view)} bytes, shorter than its header")
        _, self.height, self.width, count = _HEAD.unpack_from(view)
        at = _HEAD.size + count * _LEVEL.size
        if count < 1 or len(view) < at:
            raise ValueError(f"pixel image: {count} levels in {len(view)} bytes")
        self.levels: dict[int, np.ndarray] = {}
        for i in range(count):
            kind, rows, cols = _LEVEL.unpack_from(view, _HEAD.size + i * _LEVEL.size)
            size = rows * cols * 3
            if kind not in (PIL_LEVEL, *FACTORS) or rows < 1 or cols < 1 or at + size > len(view):
                raise ValueError(f"pixel image: level {i} ({kind}, {rows}×{cols}) is damaged")
            self.levels[kind] = np.frombuffer(view, np.uint8, size, at).reshape(rows, cols, 3)
            at += size
        if at != len(view):
            raise ValueError(f"pixel image: {len(view) - at} bytes after its levels")
        full = [self.levels[k].shape[:2] for k in (1, PIL_LEVEL) if k in self.levels]
        if 1 not in self.levels or any(shape != (self.height, self.width) for shape in full):
            raise ValueError("pixel image: no full-size level of the size its header says")

    def decode(self, factor: int = 1) -> np.ndarray:
        """What :meth:`EncodedImage.decode` gave for ``factor`` (full size where the file
        had no reduced decode)."""
        return self.levels.get(factor, self.levels[1])

    def exact(self) -> Image.Image:
        """PIL's full decode of the file, as an RGB image (a view of the stored pixels)."""
        pixels = self.levels.get(PIL_LEVEL, self.levels[1])
        return Image.frombuffer("RGB", (self.width, self.height), pixels, "raw", "RGB", 0, 1)
