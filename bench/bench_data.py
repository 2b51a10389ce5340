"""Pre-training data pipeline throughput: ours vs torchvision ImageFolder, side by side.

Both read the same JPEG photos (made once from scikit-learn's bundled photographs,
china.jpg and flower.jpg, by random crops rescaled to about 500×375, quality 90, under
``--data``; not committed) and produce the same thing: RandomResizedCrop(192, scale
0.67–1, ratio 3/4–4/3), a horizontal flip, ImageNet normalization, batches of 64.
Ours also draws the SimMIM mask of every sample, and its uint8 batches are normalized
in the consuming loop (on the CPU here; on the GPU in training), which is counted.

At 192 px a ~500×375 photo never allows a reduced-size decode (the crop would need
≥ 384 px on both sides); ``--size 96`` shows that path: there every crop decodes at
1/2 scale.

    .venv/bin/python bench/bench_data.py --workers 2 0
    .venv/bin/python bench/bench_data.py --workers 0 --size 96
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from scaling.data.masking import MaskGenerator
from scaling.data.pretrain import IMAGENET_MEAN, IMAGENET_STD, build_pretrain_loader, normalize

BATCH = 64
CLASSES = 10


def make_photos(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` ~500×375 JPEGs under ``root/train/<class>/`` and a manifest; idempotent."""
    manifest = root / f"bench-{count}.parquet"
    if manifest.exists():
        return manifest
    rng = np.random.default_rng(seed)
    photos = load_sample_images().images  # two 427×640 photographs
    paths, labels = [], []
    for i in range(count):
        src = photos[i % 2]
        h, w = src.shape[:2]
        frac = rng.uniform(0.55, 1.0)
        ch, cw = int(h * frac), int(w * frac)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        out_w = int(rng.integers(470, 530))
        out_h = round(out_w * rng.uniform(0.7, 0.8))
        image = Image.fromarray(src[top : top + ch, left : left + cw])
        image = image.resize((out_w, out_h), Image.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        label = i % CLASSES
        rel = f"train/c{label:02d}/img_{i:05d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / rel, "JPEG", quality=90)
        paths.append(rel)
        labels.append(label)
    keys = [
        int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8).digest(), "little") for p in paths
    ]
    table = pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "label": pa.array(labels, pa.int32()),
            "wnid": pa.array([f"c{x:02d}" for x in labels]).dictionary_encode(),
            "split": pa.array(["train"] * count),
            "key": pa.array(keys, pa.uint64()),
        }
    )
    meta = {"name": "bench", "classes": [f"c{x:02d}" for x in range(CLASSES)], "num_images": count}
    pq.write_table(
        table.replace_schema_metadata({b"mimscale": json.dumps(meta).encode()}), manifest
    )
    return manifest


def cpu_seconds(loader: DataLoader) -> float:
    """CPU time (user + system) of this process and of the loader's live workers (Linux)."""
    total = sum(os.times()[:2])
    tick = os.sysconf("SC_CLK_TCK")
    for worker in getattr(loader._iterator, "_workers", []):  # private, but a bench may peek
        fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def throughput(
    batches: Iterable, loader: DataLoader, consume: Callable, num_batches: int
) -> tuple[float, float]:
    """(images/s, images per CPU-second) over ``num_batches`` after a warm-up batch.

    The second figure counts the CPU time of all processes involved, so it holds up
    when other work shares the machine; the first is what a training loop would see.
    """
    it = iter(batches)
    consume(next(it))  # worker start-up excluded
    start, cpu = time.perf_counter(), cpu_seconds(loader)
    n = 0
    for batch in itertools.islice(it, num_batches):
        n += len(consume(batch))
    return n / (time.perf_counter() - start), n / (cpu_seconds(loader) - cpu)


def bench_torchvision(root: Path, size: int, workers: int, num_batches: int) -> tuple[float, float]:
    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.67, 1.0), ratio=(3 / 4, 4 / 3)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    loader = DataLoader(
        datasets.ImageFolder(root / "train", transform=tf),
        batch_size=BATCH, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0,
    )  # fmt: skip
    endless = itertools.chain.from_iterable(itertools.repeat(loader))
    try:
        return throughput(endless, loader, lambda b: b[0], num_batches)
    finally:  # stop its persistent workers before the next run starts
        if loader._iterator is not None and workers > 0:
            loader._iterator._shutdown_workers()


def bench_ours(
    root: Path, manifest: Path, size: int, workers: int, num_batches: int, norm: bool
) -> tuple[float, float]:
    loader = build_pretrain_loader(
        manifest=manifest, root=root, image_size=size, batch_size=BATCH, seed=0,
        mask=MaskGenerator(input_size=size, mask_patch_size=size // 6, model_patch_size=4),
        num_workers=workers,
    )  # fmt: skip
    consume = (lambda b: normalize(b[0], "cpu")) if norm else (lambda b: b[0])
    try:
        return throughput(loader, loader.loader, consume, num_batches)
    finally:
        loader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/mimscale-bench-photos"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 0])
    parser.add_argument("--size", type=int, default=192, help="output side (divisible by 24)")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs; best is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    manifest = make_photos(args.data, args.images)
    print(
        f"{args.images} JPEGs ~500×375 under {args.data}; batch {BATCH}, {args.size} px; "
        f"main-process torch threads {args.threads}; best of {args.rounds} alternating runs"
    )
    runs: dict[str, Callable[[int], tuple[float, float]]] = {
        "torchvision ImageFolder": lambda w: bench_torchvision(
            args.data, args.size, w, args.batches
        ),
        "ours (+normalize)": lambda w: bench_ours(
            args.data, manifest, args.size, w, args.batches, True
        ),
        "ours (uint8 only)": lambda w: bench_ours(
            args.data, manifest, args.size, w, args.batches, False
        ),
    }
    for workers in args.workers:
        best = dict.fromkeys(runs, (0.0, 0.0))
        for _ in range(args.rounds):  # alternate, so load from elsewhere hits all alike
            for name, run in runs.items():
                wall, cpu = run(workers)
                best[name] = (max(best[name][0], wall), max(best[name][1], cpu))
        base_wall, base_cpu = best["torchvision ImageFolder"]
        for name, (wall, cpu) in best.items():
            print(
                f"workers={workers}  {name:24s} {wall:7.1f} img/s  {cpu:7.1f} img/CPU-s  "
                f"ratio {wall / base_wall:4.2f}× wall, {cpu / base_cpu:4.2f}× CPU"
            )


if __name__ == "__main__":
    main()
