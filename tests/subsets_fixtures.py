"""Tiny ImageNet-style trees and listings for the subset tests (written into tmp_path)."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# Class sizes chosen so fractions round differently per class (7·0.1 = 0.7 → 1, …).
CLASS_SIZES = {"n01440764": 7, "n01443537": 12, "n01484850": 20, "n01491361": 33}


def jpeg_bytes(seed: int, size: int = 8) -> bytes:
    """A small real JPEG."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def image_names(wnid: str, count: int) -> list[str]:
    return [f"{wnid}_{i * 37 + 5}.JPEG" for i in range(count)]


def make_tree(root: Path, sizes: dict[str, int], real: bool = False) -> Path:
    """``root/<wnid>/<wnid>_<i>.JPEG``: empty files, or real JPEGs with ``real``."""
    for c, (wnid, count) in enumerate(sizes.items()):
        folder = root / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(image_names(wnid, count)):
            (folder / name).write_bytes(jpeg_bytes(c * 1000 + i) if real else b"")
    return root


def make_flat_val(root: Path, sizes: dict[str, int], real: bool = False) -> tuple[Path, Path]:
    """ImageNet's flat val: ``root/val/ILSVRC2012_val_<n>.JPEG`` + ``root/LOC_val_solution.csv``."""
    val = root / "val"
    val.mkdir(parents=True, exist_ok=True)
    rows = ["ImageId,PredictionString"]
    n = 0
    for wnid, count in sizes.items():
        for _ in range(count):
            n += 1
            image_id = f"ILSVRC2012_val_{n:08d}"
            (val / f"{image_id}.JPEG").write_bytes(jpeg_bytes(n) if real else b"")
            rows.append(f"{image_id},{wnid} 1 2 3 4 {wnid} 5 6 7 8")
    csv = root / "LOC_val_solution.csv"
    csv.write_text("\n".join(rows) + "\n")
    return val, csv


def listing_text(root: Path, prefix: str, shuffle_seed: int | None = None) -> str:
    """'path wnid' lines for every file under ``root`` (paths get ``prefix``)."""
    lines = [
        f"{prefix}{p.parent.name}/{p.name} {p.parent.name}"
        for p in sorted(root.glob("*/*"))
        if p.is_file()
    ]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(lines)
    return "\n".join(lines) + "\n"


def imagenet(tmp_path: Path, real: bool = False) -> Path:
    """``tmp/imagenet/{train,val}`` (val as class folders): the data root."""
    root = tmp_path / "imagenet"
    make_tree(root / "train", CLASS_SIZES, real)
    make_tree(root / "val", {w: 3 for w in CLASS_SIZES}, real)
    return root


def imagenet_flat_val(tmp_path: Path) -> Path:
    """``tmp/inflat/train`` + flat ``val/`` + ``LOC_val_solution.csv``: the data root."""
    root = tmp_path / "inflat"
    make_tree(root / "train", CLASS_SIZES)
    make_flat_val(root, {w: 2 for w in CLASS_SIZES})
    return root


REPO = Path(__file__).resolve().parents[1]
_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 24, 1, 2


def _drop_root_file_access() -> None:  # pragma: no cover - runs in the child
    """In a child of root: drop the capabilities that ignore file permissions."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_cli_obeying_permissions(argv: list[str]) -> subprocess.CompletedProcess:
    """``mimscale ARGV`` in a child process that file permissions apply to, even when the
    tests run as root (the child drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH)."""
    as_root = os.geteuid() == 0
    return subprocess.run(
        [sys.executable, "-m", "scaling.cli", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=_drop_root_file_access if as_root else None,
        check=False,
    )
