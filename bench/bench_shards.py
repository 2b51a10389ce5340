"""Bench: packed shards vs one file per image, side by side, same images, one process.

Images/s of one core (one process, one thread: what one data-loader worker delivers),
for four pipelines over the same ImageNet-sized JPEGs (~330–500 px, quality 90):

* ``bytes``: the encoded bytes only, in the process's memory (the storage cost; a pack's
  view of a memory-mapped shard is copied out, so its pages are really read);
* ``decode``: the pre-training sample of the image, made by the training dataset itself
  (``scaling.data.pretrain.PretrainDataset``: header, RandomResizedCrop box, reduced-size
  DCT decode, resize to 192 px, flip, mask) over a file source or a pack source;
* ``exact``: the same with ``decode="exact"`` (full PIL decode and PIL's bilinear resize:
  the released pipeline, which ``studies/paper.toml`` chooses);
* ``gpu-wkr``: what a worker does per image with ``decode="gpu"`` (the same dataset:
  bytes, header, box, flip, mask; the decode is the accelerator's), measurable on any
  machine: the cores a GPU-decoding node needs per image/s.

Each against two packs of the same images: their files' bytes (``subsets pack``), and
their decoded pixels (``subsets pack --pixels``: the same pixels, ~9× the bytes; not for
``gpu-wkr``, which it refuses, nor copied into the S3 server).

and three storages:

* ``local``: local disk, files in the page cache (as after the first epoch);
* ``local-cold``: local disk, every file and shard evicted from the page cache first
  (``posix_fadvise(DONTNEED)``);
* ``slow``: storage adding ``--delay-ms`` (default 5) per open and per read, like NFS
  or an object store: per-file pays an open and a read per image, the pack one ranged
  read per block (:mod:`subsets.slowfs`);
* ``s3`` (with ``--s3``): a local S3 server (moto), one object per image vs the pack.

``--gpu`` adds the ``decode="gpu"`` figures (on a CUDA machine): what the workers still
do per image, per core, and the device's decode + crop + resize rate.

The per-file path reads in epoch order (a random permutation); the pack path in the
shard-aware epoch order with a 4-block window, through ``scaling.data.source``'s
``FileSource`` and ``PackSource`` (what the training loaders use).

    .venv/bin/python bench/bench_shards.py [--images 3000] [--delay-ms 5] [--repeat 2] [--s3]
        [--gpu]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_subsets_common import CACHE

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_set(folder: Path, images: int) -> Path:
    """``folder/train/<wnid>/*.JPEG`` (ImageNet-sized), a manifest and its two packs (the
    files; their pixels); once."""
    import simplejpeg
    from PIL import Image

    marker = folder / f".complete-{images}"
    if not (folder / "pack-pixels" / "index.parquet").is_file():
        marker.unlink(missing_ok=True)  # a set from before pixel packs: made again
    if marker.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    canvases = []
    for _ in range(8):
        coarse = rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)
        canvases.append(np.asarray(Image.fromarray(coarse).resize((700, 600), Image.BICUBIC)))
    for i in range(images):
        wnid = f"n{10_000_000 + i % 100:08d}"
        h, w = int(rng.integers(330, 501)), int(rng.integers(400, 501))
        y, x = int(rng.integers(0, 600 - h)), int(rng.integers(0, 700 - w))
        crop = np.ascontiguousarray(canvases[i % 8][y : y + h, x : x + w])
        path = folder / "train" / wnid / f"{wnid}_{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(simplejpeg.encode_jpeg(crop, quality=90))
    cli = [sys.executable, "-m", "scaling", "subsets"]
    subprocess.run([*cli, "build", "--train", str(folder / "train"), "--source-kind",
                    "folder", "--out", str(folder / "manifests")], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    for out, extra in (("pack", []), ("pack-pixels", ["--pixels"])):
        subprocess.run([*cli, "pack", str(folder / "manifests" / "folder-100pct.parquet"),
                        "--root", str(folder), "--out", str(folder / out), "--shard-size",
                        "256M", *extra], cwd=ROOT, check=True, capture_output=True)  # fmt: skip
    marker.touch()
    return folder


def evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def timed(item: Callable[[int], object], order: np.ndarray, limit_s: float) -> float:
    """Images/s producing ``item(j)`` for rows in ``order``, for up to ``limit_s`` seconds."""
    start = time.perf_counter()
    done = 0
    for j in order.tolist():
        item(j)
        done += 1
        if done % 64 == 0 and time.perf_counter() - start > limit_s:
            break
    return done / (time.perf_counter() - start)


PIPELINES = ("bytes", "decode", "exact", "gpu-wkr")


def pipeline(source, kind: str) -> Callable[[int], object]:
    """Row j's bytes, or its pre-training sample from the real dataset (decoded on the CPU,
    or as a worker sends it to a GPU decoder)."""
    if kind == "bytes":
        return lambda j: bytes(source.read(j))  # a view of a mapped shard: read it
    from scaling.data.masking import MaskGenerator
    from scaling.data.pretrain import PretrainDataset

    mask = MaskGenerator(input_size=192, mask_patch_size=32, model_patch_size=4, mask_ratio=0.6)
    decode = {"gpu-wkr": "gpu", "exact": "exact"}.get(kind, "fast")
    dataset = PretrainDataset(source, image_size=192, mask=mask, seed=0, decode=decode)
    return lambda j: dataset[(0, j)]


def s3_storage(folder: Path, manifest):
    """Images and the pack on a local moto S3 server: (per-file source, pack source)."""
    import boto3
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    from scaling.data.source import FileSource, PackSource

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
    )  # fmt: skip
    boto3.client("s3").create_bucket(Bucket="bench")
    s3, _ = pafs.FileSystem.from_uri("s3://bench")
    pafs.copy_files(str(folder / "train"), "bench/train", destination_filesystem=s3)
    pafs.copy_files(str(folder / "pack"), "bench/pack", destination_filesystem=s3)

    class S3Files(FileSource):  # one GET per image
        def read(self, j: int) -> bytes:
            with s3.open_input_stream(f"bench/{self.manifest.path(j)}") as fh:
                return fh.read()

    return S3Files(manifest, folder), lambda: PackSource(manifest, "s3://bench/pack")


def storages(folder: Path, args: argparse.Namespace):
    """(name, per-file source, pack source factory, pixel-pack source factory or None,
    before-run hook) per storage."""
    from scaling.data.manifest import read_manifest
    from scaling.data.source import FileSource, PackSource
    from subsets.slowfs import Counts, latency_filesystem, open_file

    manifest = read_manifest(folder / "manifests" / "folder-100pct.parquet")
    files = [folder / manifest.path(j) for j in range(len(manifest))]
    shards = sorted((folder / "pack").glob("*.parquet"))
    shards += sorted((folder / "pack-pixels").glob("*.parquet"))
    delay = args.delay_ms / 1000
    slow_fs, _ = latency_filesystem(delay)

    class SlowFiles(FileSource):  # an open and a read per image, each ``delay`` late
        counts = Counts()

        def read(self, j: int) -> bytes:
            return open_file(self.where(j), delay, self.counts)

    def pack(fs=None) -> PackSource:
        return PackSource(manifest, folder / "pack", filesystem=fs)

    def pixels(fs=None) -> PackSource:
        return PackSource(manifest, folder / "pack-pixels", filesystem=fs)

    local = FileSource(manifest, folder)
    yield "local", local, pack, pixels, lambda: None
    yield "local-cold", local, pack, pixels, lambda: evict(files + shards)
    slow = SlowFiles(manifest, folder)
    slow_pack, slow_pixels = (lambda: pack(slow_fs)), (lambda: pixels(slow_fs))
    yield f"slow ({args.delay_ms:g} ms)", slow, slow_pack, slow_pixels, lambda: None
    if args.s3:  # (the pixel pack, ~9× the bytes, is not copied into moto's memory)
        yield "s3 (moto)", *s3_storage(folder, manifest), None, lambda: None


def gpu_figure(folder: Path, batch: int = 128, batches: int = 10) -> None:
    """decode="gpu": the workers' share per core (bytes, header, box) and nvJPEG's rate."""
    import torch

    if not torch.cuda.is_available():
        print("gpu decode: unmeasured (no CUDA here); on a GPU machine run "
              "`.venv/bin/python bench/bench_shards.py --gpu`")  # fmt: skip
        return
    from scaling.data.gpu_decode import EncodedBatch, decode_batch
    from scaling.data.manifest import read_manifest
    from scaling.data.masking import MaskGenerator
    from scaling.data.pretrain import PretrainDataset
    from scaling.data.source import FileSource

    manifest = read_manifest(folder / "manifests" / "folder-100pct.parquet")
    mask = MaskGenerator(input_size=192, mask_patch_size=32, model_patch_size=4, mask_ratio=0.6)
    dataset = PretrainDataset(FileSource(manifest, folder), image_size=192, mask=mask, seed=0,
                              decode="gpu")  # fmt: skip
    start = time.perf_counter()
    encoded = [
        EncodedBatch([dataset[(0, b * batch + i)][0] for i in range(batch)], (192, 192))
        for b in range(batches)
    ]
    worker = batch * batches / (time.perf_counter() - start)
    decode_batch(encoded[0], "cuda")  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    for item in encoded:
        decode_batch(item, "cuda")
    torch.cuda.synchronize()
    gpu = batch * batches / (time.perf_counter() - start)
    print(f"gpu decode ({torch.cuda.get_device_name()}): workers {worker:,.0f} img/s per core "
          f"(read, header, box), device decode + crop + resize {gpu:,.0f} img/s")  # fmt: skip


def measure(kind: str, files, makers: list, order: np.ndarray, before, args) -> list[float]:
    """Best images/s of ``repeat`` runs: the per-file source, then each pack's source."""
    rates = [0.0] * (1 + len(makers))
    for _ in range(args.repeat):  # alternate, so load changes hit all alike
        before()
        rates[0] = max(rates[0], timed(pipeline(files, kind), order, args.seconds))
        for i, make in enumerate(makers, 1):
            before()
            source = make()
            rate = timed(pipeline(source, kind), source.epoch_order(0)(0), args.seconds)
            rates[i] = max(rates[i], rate)
            source.close()  # unmapped: a mapped page is not evicted by the next run
    return rates


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(1)  # one core: what one data-loader worker has
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=6.0, help="time limit per run")
    parser.add_argument("--repeat", type=int, default=2, help="runs per cell (best kept)")
    parser.add_argument("--s3", action="store_true", help="also a local S3 server (moto)")
    parser.add_argument("--gpu", action="store_true", help="also decode='gpu' (needs CUDA)")
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    folder = make_set(CACHE / "shards-bench", args.images)
    order = np.random.default_rng(0).permutation(args.images)
    print(f"{'storage':<16}{'pipeline':<9}{'per-file img/s':>16}{'pack img/s':>12}{'ratio':>8}"
          f"{'pixels img/s':>14}{'ratio':>8}")  # fmt: skip
    for name, files, make_pack, make_pixels, before in storages(folder, args):
        for kind in PIPELINES:
            makers = [make_pack] + ([make_pixels] if make_pixels and kind != "gpu-wkr" else [])
            rates = measure(kind, files, makers, order, before, args)
            widths = (12, 14)[: len(rates) - 1]
            cells = (
                f"{r:>{w},.0f}{r / rates[0]:>7.2f}×" for r, w in zip(rates[1:], widths, strict=True)
            )
            print(f"{name:<16}{kind:<9}{rates[0]:>16,.0f}" + "".join(cells))
    if args.gpu:
        gpu_figure(folder)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
