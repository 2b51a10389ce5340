"""Pixel packs (``subsets pack --pixels``): every CPU decode mode reads the pixels it reads
from the file, the pack has the blocks (so the epoch order) of a pack of the files, the
loaders give the same batches, ``decode="gpu"`` is refused, and a damaged pixel form is a
bad image, never a crash."""

from __future__ import annotations

import io
import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scaling.cli import main
from scaling.data.decode import EncodedImage, dct_factor, encode_pixels, random_resized_crop_box
from scaling.data.finetune import build_finetune_loaders
from scaling.data.manifest import DataError
from scaling.data.masking import MaskGenerator
from scaling.data.pixels import MAGIC
from scaling.data.pretrain import build_pretrain_loader, build_val_loader
from subsets.pack import PackConfig, pack_manifests
from subsets.shards import open_pack

SIZE = 32
MASK = MaskGenerator(input_size=SIZE, mask_patch_size=8, model_patch_size=4, mask_ratio=0.6)


def _saved(image: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def _variety() -> dict[str, bytes]:
    """Encoded images of every kind the decoders treat differently."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    rgb = Image.fromarray(coarse).resize((400, 300), Image.BICUBIC)
    jpeg = _saved(rgb, "JPEG", quality=90, subsampling=2)
    return {
        "4:4:4": _saved(rgb, "JPEG", quality=90, subsampling=0),
        "4:2:0": jpeg,
        "4:2:2": _saved(rgb, "JPEG", quality=75, subsampling=1),
        "grey": _saved(rgb.convert("L"), "JPEG", quality=90),
        "progressive": _saved(rgb, "JPEG", quality=85, progressive=True),
        "cmyk": _saved(rgb.convert("CMYK"), "JPEG", quality=90),  # PIL's path only
        "odd size": _saved(rgb.resize((333, 257)), "JPEG", quality=90),
        "tiny": _saved(rgb.resize((9, 7)), "JPEG", quality=90),
        "png": _saved(rgb, "PNG"),
        "rgba": _saved(rgb.convert("RGBA"), "PNG"),
        "palette": _saved(rgb.convert("P"), "GIF"),
        "truncated": jpeg[: len(jpeg) // 3],
    }


def test_the_pixel_form_gives_the_pixels_of_the_file_in_every_cpu_mode() -> None:
    factors = set()
    for name, data in _variety().items():
        pixels = encode_pixels(data)
        if name == "truncated":  # does not decode: stored as it is, a bad image as before
            assert pixels == data
            continue
        assert pixels.startswith(MAGIC), name
        a, b = EncodedImage(data), EncodedImage(memoryview(pixels))
        assert (a.height, a.width) == (b.height, b.width) and not b.is_jpeg, name
        rng = random.Random(name)
        for size, k in itertools.product((SIZE, 96), range(10)):
            box = random_resized_crop_box(rng, a.height, a.width, (0.08, 1.0), (3 / 4, 4 / 3))
            factors.add(dct_factor(box[2], box[3], size, size))
            args = (box, (size, size))
            fast = a.crop_resize(*args, flip=k % 2 == 1)
            assert torch.equal(fast, b.crop_resize(*args, flip=k % 2 == 1)), (name, box)
            exact = a.crop_resize_exact(*args, flip=k % 2 == 1)
            assert torch.equal(exact, b.crop_resize_exact(*args, flip=k % 2 == 1)), (name, box)
        assert np.array_equal(np.asarray(a.to_pil()), np.asarray(b.to_pil())), name
    assert factors == {1, 2, 4, 8}  # every reduced-size decode was compared


def test_a_damaged_pixel_form_is_a_bad_image_not_a_crash() -> None:
    data = encode_pixels(_variety()["4:2:0"])
    box = (10, 20, 200, 240)
    for cut in (len(MAGIC), 12, 20, 29, 40, 1000, len(data) // 2, len(data) - 1):
        with pytest.raises(ValueError, match=r"^pixel image: "):
            EncodedImage(data[:cut]).crop_resize(box, (SIZE, SIZE))
    rng = random.Random(7)
    outcomes = set()
    for _ in range(300):  # one flipped byte in the header or the level table
        damaged = bytearray(data)
        damaged[rng.randrange(0, 50)] ^= 1 << rng.randrange(8)
        try:
            out = EncodedImage(bytes(damaged)).crop_resize(box, (SIZE, SIZE))
        except (ValueError, OSError) as err:  # what the loaders count as a bad image
            outcomes.add(type(err).__name__)
        else:
            assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.uint8
            outcomes.add("decoded")
    assert "ValueError" in outcomes


@pytest.fixture(scope="module")
def packs(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo set packed twice in small blocks: its files, and its pixels."""
    manifests = tuple(sorted((demo_dir / "manifests").glob("*.parquet")))
    out = {}
    for kind in ("files", "pixels"):
        out[kind] = tmp_path_factory.mktemp(f"demo-{kind}")
        pack_manifests(PackConfig(manifests=manifests, root=demo_dir, out_dir=out[kind],
                                  shard_bytes=400_000, block_bytes=16_000,
                                  pixels=kind == "pixels"))  # fmt: skip
    return out


def test_a_pixel_pack_has_the_blocks_of_a_files_pack(packs: dict[str, Path]) -> None:
    files, pixels = open_pack(packs["files"]), open_pack(packs["pixels"])
    assert (files.content, pixels.content) == ("files", "pixels")
    assert np.array_equal(files.keys, pixels.keys)
    assert np.array_equal(files.block_of, pixels.block_of) and files.num_blocks > 20
    assert len(pixels.shards) > len(files.shards)  # shards close at what they store
    assert pixels.sizes.sum() > 5 * files.sizes.sum()
    assert pixels.verify() == {}


@pytest.mark.parametrize("decode", ["fast", "exact"])
def test_loaders_give_the_same_batches_from_either_pack(
    demo_dir: Path, packs: dict[str, Path], decode: str
) -> None:
    def manifest(name: str) -> Path:
        return demo_dir / "manifests" / f"{name}.parquet"

    common = {"root": demo_dir, "image_size": SIZE, "mask": MASK, "decode": decode}
    for kind in ("pretrain", "val"):
        batches = []
        for pack in packs.values():
            if kind == "pretrain":
                loader = build_pretrain_loader(
                    manifest=manifest("demo-50pct"),
                    batch_size=16,
                    seed=3,
                    num_workers=0,
                    packed=pack,
                    **common,
                )
            else:
                loader = build_val_loader(manifest=manifest("demo-val"), batch_size=64,
                                          num_workers=0, packed=pack, **common)  # fmt: skip
            batches.append(list(itertools.islice(loader, 4)))
        for (x, m), (y, n) in zip(*batches, strict=True):
            assert torch.equal(x, y) and torch.equal(m, n), kind
    if decode == "exact":
        return
    tune = {"train_manifest": manifest("demo-25pct"), "val_manifest": manifest("demo-val")}
    tune |= {"root": demo_dir, "image_size": SIZE, "batch_size": 8, "seed": 2, "num_workers": 0}
    a, b = (build_finetune_loaders(**tune, packed=p) for p in packs.values())
    three = [list(itertools.islice(loaders.train, 3)) for loaders in (a, b)]
    for (x, y), (u, v) in zip(*three, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)


def test_decode_gpu_is_refused_on_a_pixel_pack(demo_dir: Path, packs: dict[str, Path]) -> None:
    refused = r"holds decoded pixels \(subsets pack --pixels\): decode = \"gpu\" has no JPEG"
    with pytest.raises(DataError, match=refused):
        build_pretrain_loader(
            manifest=demo_dir / "manifests" / "demo-25pct.parquet", root=demo_dir,
            image_size=SIZE, mask=MASK, batch_size=8, seed=0, num_workers=0,
            packed=packs["pixels"], decode="gpu", device="cpu",
        )  # fmt: skip


def test_pack_pixels_on_the_command_line_is_deterministic(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = str(demo_dir / "manifests" / "demo-1pct.parquet")
    digests = []
    for out in ("a", "b"):
        argv = ["subsets", "pack", manifest, "--root", str(demo_dir), "--out", str(tmp_path / out)]
        assert main([*argv, "--pixels", "--workers", "2"]) == 0
        assert " decoded images (" in capsys.readouterr().out
        digests.append([s["digest"] for s in open_pack(tmp_path / out).shards])
    assert digests[0] == digests[1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 3}, r"index\.parquet is not a pack index this reads"),
        ({"content": "jxl"}, r"index\.parquet says it holds 'jxl' images, which this version "
                             r"does not read \('files' or 'pixels'\)"),
    ],
)  # fmt: skip
def test_a_pack_this_version_cannot_read_is_refused(
    packs: dict[str, Path], tmp_path: Path, change: dict, message: str
) -> None:
    import json
    import shutil

    import pyarrow.parquet as pq

    from subsets.errors import SubsetError
    from subsets.packlayout import PACK_KEY

    assert open_pack(packs["pixels"]).meta["format"] == 2  # older readers refuse a pixel pack
    assert open_pack(packs["files"]).meta["format"] == 1
    copy = tmp_path / "pack"
    shutil.copytree(packs["pixels"], copy)
    index = pq.read_table(copy / "index.parquet")
    meta = json.loads(index.schema.metadata[PACK_KEY]) | change
    pq.write_table(index.replace_schema_metadata({PACK_KEY: json.dumps(meta)}),
                   copy / "index.parquet")  # fmt: skip
    with pytest.raises(SubsetError, match=rf"^pack {copy}: {message}"):
        open_pack(copy)
