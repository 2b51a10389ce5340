"""Decode modes: ``exact`` is the released SimMIM transform pixel for pixel; ``fast`` is
close to it; both run in the loaders; unknown modes are refused with the list."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from sklearn.datasets import load_sample_images
from torchvision.transforms import InterpolationMode

from scaling.data.decode import (
    DECODE_MODES,
    EncodedImage,
    center_square_box,
    crop_function,
    random_resized_crop_box,
)


@pytest.fixture(scope="module")
def photo() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(load_sample_images().images[1]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("flip", [False, True])
def test_exact_mode_is_torchvisions_random_resized_crop_on_pil(photo: bytes, flip: bool) -> None:
    rng = random.Random(4)
    image = EncodedImage(photo)
    for _ in range(5):
        top, left, h, w = random_resized_crop_box(rng, image.height, image.width, (0.67, 1.0),
                                                  (3 / 4, 4 / 3))  # fmt: skip
        pil = Image.open(io.BytesIO(photo)).convert("RGB")
        expected = TF.resized_crop(pil, top, left, h, w, [192, 192], InterpolationMode.BILINEAR)
        if flip:
            expected = TF.hflip(expected)
        got = image.crop_resize_exact((top, left, h, w), (192, 192), flip=flip)
        assert torch.equal(got, TF.pil_to_tensor(expected))


def test_fast_mode_is_close_to_exact(photo: bytes) -> None:
    image = EncodedImage(photo)
    box = center_square_box(image.height, image.width)  # 427 px: a 1/2-scale decode
    fast = image.crop_resize(box, (192, 192)).float()
    exact = image.crop_resize_exact(box, (192, 192)).float()
    difference = (fast - exact).abs().mean().item()
    assert 0.0 < difference < 6.0  # a few grey levels: the cost fast mode pays


def test_modes_registry_and_errors() -> None:
    assert list(DECODE_MODES) == ["fast", "exact"]
    assert crop_function("exact") is EncodedImage.crop_resize_exact
    assert crop_function("gpu") is None  # the workers send bytes; the device decodes
    with pytest.raises(ValueError, match=r"decode: unknown mode 'turbo'; valid: fast, exact, gpu"):
        crop_function("turbo")


def test_exact_mode_reads_any_format(photo: bytes) -> None:
    array = np.asarray(Image.open(io.BytesIO(photo)).convert("L"))
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    out = EncodedImage(buf.getvalue()).crop_resize_exact((0, 0, 100, 120), (32, 32))
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])  # grey → RGB
