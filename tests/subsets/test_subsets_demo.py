"""The embedded demo data set: real digits as an ImageNet-style tree, plus its manifests."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
from PIL import Image

from scaling.cli import main
from subsets.demo import build_demo, demo_wnid
from subsets.manifest import read_manifest
from subsets.verify import verify_manifest

DEMO_MANIFESTS = ["demo-100pct", "demo-10pct", "demo-1pct", "demo-25pct", "demo-50pct", "demo-val"]


def test_demo_tree_and_manifests(demo_dir: Path) -> None:
    classes = sorted(p.name for p in (demo_dir / "train").iterdir())
    assert classes == [demo_wnid(d) for d in range(10)]
    train = list((demo_dir / "train").glob("*/*.jpg"))
    val = list((demo_dir / "val").glob("*.JPEG"))
    assert len(train) + len(val) == 1797 and 0.14 < len(val) / 1797 < 0.16
    with Image.open(train[0]) as im:
        assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"
    with open(demo_dir / "LOC_val_solution.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(val) and rows[0]["PredictionString"].startswith("n0000000")
    names = sorted(p.stem for p in (demo_dir / "manifests").glob("*.parquet"))
    assert names == DEMO_MANIFESTS
    table, info = read_manifest(demo_dir / "manifests" / "demo-val.parquet")
    assert info.num_classes == 10 and table.num_rows == len(val)
    assert verify_manifest(demo_dir / "manifests" / "demo-25pct.parquet", demo_dir, decode=True).ok


def test_build_demo_is_idempotent_and_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    out = build_demo(tmp_path / "demo", manifests=False)
    assert time.perf_counter() - start < 30  # < 5 s on an idle machine; generous for CI
    assert not (out / "manifests").exists()
    image = next((out / "train").glob("*/*.jpg"))
    stamp = image.stat().st_mtime_ns
    assert build_demo(out, manifests=False) == out and image.stat().st_mtime_ns == stamp
    build_demo(out)  # now with manifests, from the images already there
    assert sorted(p.stem for p in (out / "manifests").glob("*.parquet")) == DEMO_MANIFESTS
    assert image.stat().st_mtime_ns == stamp


def test_demo_is_deterministic(tmp_path: Path, demo_dir: Path) -> None:
    out = build_demo(tmp_path / "again")
    for name in DEMO_MANIFESTS:
        path = f"manifests/{name}.parquet"
        assert (out / path).read_bytes() == (demo_dir / path).read_bytes()


def test_demo_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["subsets", "demo", str(tmp_path / "d"), "--no-manifests"]) == 0
    assert "demo data set in" in capsys.readouterr().out
    assert (tmp_path / "d" / "LOC_val_solution.csv").is_file()
