"""The embedded demo data set: scikit-learn's handwritten digits as an ImageNet-style tree.

1,797 real 8×8 digit scans in 10 classes (the data behind
``sklearn.datasets.load_digits``), upscaled to 64×64 RGB JPEG (quality 95) so the JPEG
decode path is exercised. Layout, like ImageNet's::

    OUT/train/n0000000<d>/digit_<i>.jpg        85% of the images, class folders
    OUT/val/demo_val_<j>.JPEG                  15% (every image i with i % 20 < 3), flat
    OUT/LOC_val_solution.csv                   ImageId,PredictionString ('<wnid> x0 y0 x1 y1')
    OUT/manifests/demo-{100,50,25,10,1}pct.parquet, demo-val.parquet   (unless manifests=False)
    OUT/.mimscale-demo.json                    written last: the tree is complete

:func:`build_demo` is idempotent: with the marker and every manifest in place it does
nothing; a tree built before a manifest was added gets the missing ones (the images and the
manifests already there stay byte-identical: each manifest depends only on its own fraction).

demo-10pct (155 images) and demo-1pct (17, about two per class) give the quickstart a data
axis small enough to overfit on the CPU in a minute: a tiny model memorises 17 digits in
about 800 steps of batch 16, where its val loss turns up (see studies/quickstart.toml).
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
from fractions import Fraction
from pathlib import Path

import numpy as np

from subsets.atomic import atomic_path, atomic_write_text
from subsets.build import BuildConfig, build_subsets
from subsets.errors import SubsetError
from subsets.outdir import check_out_folder

logger = logging.getLogger(__name__)

DEMO_VERSION = 1
IMAGE_SIZE = 64
JPEG_QUALITY = 95
MARKER = ".mimscale-demo.json"
VAL_EVERY, VAL_FIRST = 20, 3  # image i goes to val when i % 20 < 3: 15%
# The source kind's defaults (100, 50, 25 %) and val, then the small fractions.
DEMO_SUBSETS = ("demo-100pct", "demo-50pct", "demo-25pct", "demo-val")
EXTRA_FRACTIONS = (Fraction(1, 10), Fraction(1, 100))


def demo_wnid(digit: int) -> str:
    """Pseudo-wnid of a digit class: 'n00000000' … 'n00000009'."""
    return f"n{digit:08d}"


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 8, 8) scaled to 0..255, labels int) of the digits set."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise SubsetError("the demo data set needs scikit-learn (pip install scikit-learn)")
    # The CSV that load_digits reads; loading it directly skips sklearn's slow imports.
    csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        data = np.loadtxt(csv, delimiter=",")
        pixels, labels = data[:, :-1], data[:, -1].astype(np.int64)
    else:  # pragma: no cover - a future scikit-learn moving its data file
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels, labels = digits.data, digits.target
    images = np.round(pixels.reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    return images, labels


def encode_digit(image: np.ndarray) -> bytes:
    """One 8×8 digit as a 64×64 RGB JPEG."""
    from PIL import Image

    big = Image.fromarray(image, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    out = io.BytesIO()
    big.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:  # no fsync per file: the marker vouches for the tree
        tmp.write_bytes(data)


def _marker(out_dir: Path) -> dict:
    """The completion marker ({} when absent, unreadable or of another demo version)."""
    try:
        marker = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if marker.get("version") == DEMO_VERSION else {}


def write_demo_tree(out_dir: Path) -> int:
    """Write the train and val images and the val CSV; returns the number of images."""
    images, labels = load_digit_images()
    csv_lines = ["ImageId,PredictionString"]
    last = IMAGE_SIZE - 1
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        wnid = demo_wnid(int(label))
        if i % VAL_EVERY < VAL_FIRST:
            image_id = f"demo_val_{i:05d}"
            _write(out_dir / "val" / f"{image_id}.JPEG", encode_digit(image))
            csv_lines.append(f"{image_id},{wnid} 0 0 {last} {last}")
        else:
            _write(out_dir / "train" / wnid / f"digit_{i:04d}.jpg", encode_digit(image))
    atomic_write_text(out_dir / "LOC_val_solution.csv", "\n".join(csv_lines) + "\n")
    return len(images)


def demo_manifest_names() -> list[str]:
    """Stems of every manifest :func:`build_demo` writes, sorted."""
    from subsets.registry import fraction_name

    return sorted([*DEMO_SUBSETS, *(fraction_name("demo", f) for f in EXTRA_FRACTIONS)])


def _manifests_complete(out_dir: Path) -> bool:
    folder = out_dir / "manifests"
    return all((folder / f"{name}.parquet").is_file() for name in demo_manifest_names())


def build_demo(out_dir: str | Path, *, manifests: bool = True) -> Path:
    """Write the demo tree (and its manifests) under ``out_dir``; a no-op when complete."""
    out_dir = Path(out_dir).absolute()
    marker = _marker(out_dir)
    if marker and (not manifests or (marker.get("manifests") and _manifests_complete(out_dir))):
        logger.info("demo data set already complete in %s", out_dir)
        return out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise SubsetError(f"demo: {out_dir} exists and is not a folder")
    check_out_folder(out_dir, "demo:")  # under a file, not writable
    count = marker.get("images") or write_demo_tree(out_dir)
    if manifests:
        build_subsets(
            BuildConfig(
                out_dir=out_dir / "manifests",
                source_kind="demo",
                train=out_dir / "train",
                val=out_dir / "val",
                data_root=out_dir,
                subsets=DEMO_SUBSETS,
                fractions=EXTRA_FRACTIONS,
            )
        )
    marker = {"version": DEMO_VERSION, "images": count, "manifests": manifests}
    atomic_write_text(out_dir / MARKER, json.dumps(marker, sort_keys=True) + "\n")
    logger.info("demo data set (%d images) complete in %s", count, out_dir)
    return out_dir
