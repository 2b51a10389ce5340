"""Decoding: reduced-size DCT, PIL fallback, RGB always, crop boxes."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, features
from sklearn.datasets import load_sample_images

from scaling.data.decode import (
    EncodedImage,
    center_square_box,
    dct_factor,
    random_resized_crop_box,
)


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A real photograph (scikit-learn's bundled china.jpg, 427×640) as JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(load_sample_images().images[0]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def encode(array: np.ndarray, fmt: str, mode: str | None = None, **kw: object) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def full_decode_reference(data: bytes, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    pixels = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB")))
    top, left, h, w = box
    region = pixels.permute(2, 0, 1)[None, :, top : top + h, left : left + w]
    return F.interpolate(region, size=(size, size), mode="bilinear", antialias=True)[0]


def test_dct_factor_keeps_the_crop_at_least_the_output_size() -> None:
    assert dct_factor(400, 400, 48, 48) == 8
    assert dct_factor(400, 300, 48, 48) == 4
    assert dct_factor(400, 300, 192, 192) == 1
    assert dct_factor(384, 390, 192, 192) == 2


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_reduced_decode_has_the_scaled_size(photo: bytes, factor: int) -> None:
    image = EncodedImage(photo)
    assert (image.height, image.width) == (427, 640)
    assert image.decode(factor).shape == (math.ceil(427 / factor), math.ceil(640 / factor), 3)


@pytest.mark.parametrize(
    ("box", "size", "factor"),
    [
        ((0, 0, 427, 640), 48, 8),
        ((8, 100, 400, 420), 96, 4),
        ((50, 60, 300, 320), 128, 2),
        ((51, 61, 301, 323), 128, 2),  # off the decoded grid: snapped to it
    ],
)
def test_reduced_decode_crop_is_close_to_full_decode(
    photo: bytes, box: tuple[int, int, int, int], size: int, factor: int
) -> None:
    assert dct_factor(box[2], box[3], size, size) == factor
    out = EncodedImage(photo).crop_resize(box, (size, size))
    assert out.shape == (3, size, size) and out.dtype == torch.uint8
    # The reduced decode crops whole decoded pixels: compare with that box at full size.
    top, left, h, w = box
    y0, x0, y1, x1 = ((c + factor // 2) // factor for c in (top, left, top + h, left + w))
    snapped = (y0 * factor, x0 * factor, (y1 - y0) * factor, (x1 - x0) * factor)
    diff = (out.float() - full_decode_reference(photo, snapped, size).float()).abs()
    assert diff.mean() < 2.5, diff.mean()


def test_full_size_crop_matches_pil_decode_closely(photo: bytes) -> None:
    box = (20, 30, 150, 170)  # too small to reduce: factor 1
    out = EncodedImage(photo).crop_resize(box, (160, 160))
    diff = (out.float() - full_decode_reference(photo, box, 160).float()).abs()
    assert diff.mean() < 1.0


def test_flip_mirrors_the_crop(photo: bytes) -> None:
    image, box = EncodedImage(photo), (0, 0, 400, 400)
    assert torch.equal(
        image.crop_resize(box, (64, 64), flip=True), image.crop_resize(box, (64, 64)).flip(-1)
    )


def test_png_falls_back_to_pil_exactly() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    image = EncodedImage(encode(pixels, "PNG"))
    assert not image.is_jpeg and (image.height, image.width) == (30, 40)
    out = image.crop_resize((0, 0, 30, 40), (30, 40))
    assert torch.equal(out, torch.from_numpy(pixels).permute(2, 0, 1))


@pytest.mark.parametrize(
    ("fmt", "mode"), [("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "L")]
)
def test_every_mode_decodes_to_rgb(fmt: str, mode: str) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    out = EncodedImage(encode(pixels, fmt, mode)).crop_resize((0, 0, 24, 32), (16, 16))
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
    if mode == "L":
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_falls_back_to_pil() -> None:
    pixels = np.full((20, 20, 3), 200, dtype=np.uint8)
    out = EncodedImage(encode(pixels, "WEBP", lossless=True)).crop_resize((0, 0, 20, 20), (10, 10))
    assert int(out.min()) == int(out.max()) == 200


def test_garbage_and_truncated_files_raise() -> None:
    with pytest.raises(OSError):
        EncodedImage(b"not an image at all").decode()
    jpeg = encode(np.zeros((64, 64, 3), dtype=np.uint8), "JPEG")
    with pytest.raises(OSError):
        EncodedImage(jpeg[: len(jpeg) // 2]).decode()


def test_random_resized_crop_box_fits_and_follows_its_rng() -> None:
    for seed in range(200):
        top, left, h, w = box = random_resized_crop_box(
            random.Random(seed), 375, 500, (0.67, 1.0), (3 / 4, 4 / 3)
        )
        assert 0 <= top <= 375 - h and 0 <= left <= 500 - w
        assert 0.66 * 375 * 500 <= h * w <= 375 * 500
        again = random_resized_crop_box(random.Random(seed), 375, 500, (0.67, 1.0), (3 / 4, 4 / 3))
        assert again == box


def test_random_resized_crop_box_has_torchvision_statistics() -> None:
    from torchvision.transforms import RandomResizedCrop

    rng, image = random.Random(0), torch.empty(1, 375, 500)
    torch.manual_seed(0)
    ours = np.array(
        [random_resized_crop_box(rng, 375, 500, (0.67, 1), (3 / 4, 4 / 3)) for _ in range(4000)]
    )
    theirs = np.array(
        [RandomResizedCrop.get_params(image, [0.67, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)]
    )
    for stat in (lambda b: b[:, 2] * b[:, 3], lambda b: b[:, 3] / b[:, 2], lambda b: b[:, 1]):
        assert abs(stat(ours).mean() / stat(theirs).mean() - 1) < 0.02


def test_random_resized_crop_box_falls_back_to_a_clamped_center_crop() -> None:
    # A 10×200 strip: no box with aspect ≤ 4/3 covers ≥ 67% of it.
    top, left, h, w = random_resized_crop_box(
        random.Random(0), 10, 200, (0.67, 1.0), (3 / 4, 4 / 3)
    )
    assert (h, w) == (10, 13) and top == 0 and left == (200 - 13) // 2


def test_center_square_box() -> None:
    assert center_square_box(375, 500) == (0, 62, 375, 375)
    assert center_square_box(500, 375) == (62, 0, 375, 375)
