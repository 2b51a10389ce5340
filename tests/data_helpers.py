"""Tiny image trees and manifests for the data-pipeline tests (written into tmp_path)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random RGB image (compresses well, like a photo, unlike white noise)."""
    coarse = rng.integers(0, 256, size=(height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    big = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    return np.asarray(big)


def path_key(path: str) -> int:
    return int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8).digest(), "little")


def write_manifest(
    file: Path, paths: list[str], labels: list[int], classes: list[str], split: str = "train"
) -> Path:
    """A manifest with the subsets contract: columns and ``mimscale`` JSON metadata."""
    table = pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "label": pa.array(labels, pa.int32()),
            "wnid": pa.array([classes[i] for i in labels]).dictionary_encode(),
            "split": pa.array([split] * len(paths)),
            "key": pa.array([path_key(p) for p in paths], pa.uint64()),
        }
    )
    meta = {"name": file.stem, "classes": classes, "num_images": len(paths)}
    table = table.replace_schema_metadata({b"mimscale": json.dumps(meta).encode()})
    pq.write_table(table, file)
    return file


def write_tree(
    root: Path,
    n: int,
    *,
    classes: tuple[str, ...] = ("n001", "n002", "n003"),
    split: str = "train",
    seed: int = 0,
    ext: str = "JPEG",
) -> tuple[Path, list[str]]:
    """``n`` JPEGs of varied sizes under ``root/split/<wnid>/`` and their manifest."""
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for i in range(n):
        label = i % len(classes)
        rel = f"{split}/{classes[label]}/{classes[label]}_{i:04d}.{ext}"
        h, w = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_image(rng, h, w)).save(root / rel, quality=90)
        paths.append(rel)
        labels.append(label)
    order = sorted(range(n), key=lambda i: (classes[labels[i]], paths[i]))
    paths, labels = [paths[i] for i in order], [labels[i] for i in order]
    manifest = write_manifest(root / f"{split}.parquet", paths, labels, list(classes), split)
    return manifest, paths
