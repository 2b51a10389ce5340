"""The demo set's small fractions (demo-10pct, demo-1pct) that let the quickstart overfit."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from subsets.build import BuildConfig, build_subsets
from subsets.demo import DEMO_SUBSETS, MARKER, build_demo, demo_manifest_names
from subsets.manifest import read_manifest


def test_small_fractions_are_class_balanced_and_nested(demo_dir: Path) -> None:
    folder = demo_dir / "manifests"
    paths, counts = {}, {}
    for name in ("demo-100pct", "demo-25pct"):
        table, info = read_manifest(folder / f"{name}.parquet")
        assert info.num_classes == 10
        counts[name] = Counter(table.column("wnid").to_pylist())
        paths[name] = set(table.column("path").to_pylist())
    full = counts["demo-100pct"]
    for name, percent in (("demo-1pct", 1), ("demo-10pct", 10)):
        table, _ = read_manifest(folder / f"{name}.parquet")
        per_class = Counter(table.column("wnid").to_pylist())
        # max(1, round(f·n)), rounded half up (subsets/select.py)
        expected = {wnid: max(1, (2 * n * percent + 100) // 200) for wnid, n in full.items()}
        assert per_class == expected, name  # every class, in proportion
        paths[name] = set(table.column("path").to_pylist())
    assert len(paths["demo-1pct"]) == 17 and len(paths["demo-10pct"]) == 155
    assert paths["demo-1pct"] < paths["demo-10pct"] < paths["demo-25pct"]


def test_the_former_manifests_are_unchanged(tmp_path: Path, demo_dir: Path) -> None:
    # The manifests a build without the small fractions writes: those of the source kind's
    # defaults, byte for byte (the quickstart's former cells keep their stage ids).
    out = tmp_path / "defaults"
    build_subsets(
        BuildConfig(
            out_dir=out,
            source_kind="demo",
            train=demo_dir / "train",
            val=demo_dir / "val",
            data_root=demo_dir,
        )
    )
    assert sorted(p.stem for p in out.glob("*.parquet")) == sorted(DEMO_SUBSETS)
    for name in DEMO_SUBSETS:
        path = f"{name}.parquet"
        assert (out / path).read_bytes() == (demo_dir / "manifests" / path).read_bytes()


def test_a_tree_built_before_the_small_fractions_gets_them(tmp_path: Path) -> None:
    out = build_demo(tmp_path / "demo")
    old = out / "manifests" / "demo-1pct.parquet"
    kept = out / "manifests" / "demo-25pct.parquet"
    stamp = kept.stat().st_mtime_ns
    old.unlink()  # as a demo tree of the previous layout: marker complete, no demo-1pct
    assert json.loads((out / MARKER).read_text())["manifests"] is True
    build_demo(out)
    assert pq.read_metadata(old).num_rows == 17
    assert kept.stat().st_mtime_ns == stamp  # unchanged content is not rewritten
    names = sorted(p.stem for p in (out / "manifests").glob("*.parquet"))
    assert names == demo_manifest_names()
