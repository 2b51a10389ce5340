"""decode="gpu": workers send encoded bytes with the same crop boxes as the CPU modes; the
batch is decoded on the device. Runs on the CPU here (torchvision's CPU decoder through
the same code path); the ``gpu``-marked tests run nvJPEG on CUDA."""

from __future__ import annotations

import io
import itertools
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from scaling.data.decode import EncodedImage, random_resized_crop_box
from scaling.data.gpu_decode import EncodedBatch, decode_batch, encode_sample
from scaling.data.manifest import DataError
from scaling.data.masking import MaskGenerator
from scaling.data.pretrain import build_pretrain_loader, build_val_loader

SIZE = 32
MASK = MaskGenerator(input_size=SIZE, mask_patch_size=8, model_patch_size=4, mask_ratio=0.6)


def _jpeg(index: int, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(load_sample_images().images[index]).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _batch(datas: list[bytes], size: int = 96) -> tuple[EncodedBatch, list]:
    rng = random.Random(0)
    samples, boxes = [], []
    for i, data in enumerate(datas):
        image = EncodedImage(data)
        box = random_resized_crop_box(rng, image.height, image.width, (0.67, 1.0), (0.75, 4 / 3))
        samples.append(encode_sample(image, box, i % 2 == 1, f"image {i}"))
        boxes.append(box)
    return EncodedBatch(samples, (size, size)), boxes


def test_a_batch_decodes_close_to_the_exact_mode() -> None:
    datas = [_jpeg(0), _jpeg(1), _jpeg(0, quality=70)]
    batch, boxes = _batch(datas)
    out = decode_batch(batch, "cpu")
    assert out.shape == (3, 3, 96, 96) and out.dtype == torch.uint8
    for i, (data, box) in enumerate(zip(datas, boxes, strict=True)):
        exact = EncodedImage(data).crop_resize_exact(box, (96, 96), flip=i % 2 == 1)
        diff = (out[i].int() - exact.int()).abs().float()
        assert diff.mean() < 1.0  # full-size decode; only the resize kernels differ


def test_other_formats_travel_as_pixels() -> None:
    png = io.BytesIO()
    Image.fromarray(load_sample_images().images[0]).save(png, "PNG")
    batch, boxes = _batch([png.getvalue(), _jpeg(1)])
    assert batch.samples[0].data.dim() == 3 and batch.samples[1].data.dim() == 1
    out = decode_batch(batch, "cpu")
    exact = EncodedImage(png.getvalue()).crop_resize_exact(boxes[0], (96, 96))
    assert (out[0].int() - exact.int()).abs().float().mean() < 1.0


def test_a_jpeg_no_decoder_reads_is_a_located_error() -> None:
    good = _jpeg(0)
    broken = good[:400] + bytes(len(good) - 400)  # the header parses, the body is zeros
    batch, _ = _batch([good, good])
    batch.samples[1].data = torch.frombuffer(bytearray(broken), dtype=torch.uint8)
    try:
        out = decode_batch(batch, "cpu")  # a decoder may fill in what it cannot read
    except DataError as err:
        assert "image 1: the GPU decoder and PIL both reject this JPEG" in str(err)
    else:
        assert out.shape == (2, 3, 96, 96)


def _loaders(demo_dir: Path, device: str, **kw: object):
    args = {"manifest": demo_dir / "manifests" / "demo-25pct.parquet", "root": demo_dir}
    args |= {"image_size": SIZE, "mask": MASK, "batch_size": 8, "seed": 5, "num_workers": 0}
    return build_pretrain_loader(**(args | {"decode": "gpu", "device": device} | kw))


def test_gpu_mode_loaders_keep_the_guarantees_on_the_cpu(demo_dir: Path) -> None:
    a = list(itertools.islice(_loaders(demo_dir, "cpu"), 4))
    b = list(itertools.islice(_loaders(demo_dir, "cpu", num_workers=2), 4))
    c = list(itertools.islice(_loaders(demo_dir, "cpu", start_step=2), 2))
    for (xa, ma), (xb, mb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ma, mb)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a[2:], c, strict=True))
    fast_args = {"manifest": demo_dir / "manifests" / "demo-25pct.parquet", "root": demo_dir}
    fast = build_pretrain_loader(**fast_args, image_size=SIZE, mask=MASK, batch_size=8, seed=5,
                                 num_workers=0)  # fmt: skip
    x_fast, _ = next(iter(fast))
    assert (a[0][0].int() - x_fast.int()).abs().float().mean() < 2.0  # same boxes and flips
    val = build_val_loader(**fast_args, image_size=SIZE, mask=MASK, batch_size=16, num_workers=0,
                           decode="gpu", device="cpu")  # fmt: skip
    images, masks = next(iter(val))
    assert images.shape == (16, 3, SIZE, SIZE) and masks.shape == (16, 8, 8)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_nvjpeg_matches_the_cpu_decode_closely() -> None:
    batch, _ = _batch([_jpeg(0), _jpeg(1), _jpeg(0, quality=70)])
    cpu, gpu = decode_batch(batch, "cpu"), decode_batch(batch, "cuda")
    assert gpu.is_cuda and gpu.shape == cpu.shape
    assert (gpu.cpu().int() - cpu.int()).abs().float().mean() < 1.0


@pytest.mark.gpu
@needs_cuda
def test_a_gpu_mode_loader_yields_batches_on_cuda(demo_dir: Path) -> None:
    loader = _loaders(demo_dir, "cuda", num_workers=2)
    images, _ = next(iter(loader))
    assert images.is_cuda and images.dtype == torch.uint8 and images.shape == (8, 3, SIZE, SIZE)
    cpu, _ = next(iter(_loaders(demo_dir, "cpu")))
    assert (images.cpu().int() - cpu.int()).abs().float().mean() < 1.0
    loader.close()
