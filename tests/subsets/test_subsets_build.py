"""Building manifests: contents, determinism, order independence, nesting, balance, seeds."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from subsets_fixtures import CLASS_SIZES, imagenet, imagenet_flat_val, listing_text, make_tree

from subsets.build import BuildConfig, build_subsets
from subsets.manifest import manifest_digest, read_manifest, read_manifest_info
from subsets.registry import load_class_list
from subsets.scan import scan_tree
from subsets.select import fraction_counts

IN1K = ("in1k-10pct", "in1k-20pct", "in1k-50pct", "in1k-100pct", "in1k-val")


def _build(out: Path, **kwargs) -> list:
    return build_subsets(BuildConfig(out_dir=out, **kwargs)).manifests


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}


def _paths(out: Path, name: str) -> list[str]:
    table, _ = read_manifest(out / f"{name}.parquet", columns=["path"])
    return table.column("path").to_pylist()


def test_in1k_manifests_follow_the_contract(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    results = _build(tmp_path / "m", train=root / "train", val=root / "val")
    assert [m.info.name for m in results] == list(IN1K)
    classes = tuple(sorted(CLASS_SIZES))
    for name in IN1K:
        table, info = read_manifest(tmp_path / "m" / f"{name}.parquet")
        assert table.schema.field("label").type == pa.int32()
        assert table.schema.field("key").type == pa.uint64()
        assert pa.types.is_dictionary(table.schema.field("wnid").type)
        assert info.classes == classes and info.num_images == table.num_rows
        assert info.source_kind == "in1k" and info.seed == 0 and info.format_version == 1
        labels, wnids = table.column("label").to_pylist(), table.column("wnid").to_pylist()
        assert [classes[i] for i in labels] == wnids
        paths = table.column("path").to_pylist()
        assert list(zip(wnids, paths, strict=True)) == sorted(zip(wnids, paths, strict=True))
        split = "val" if name == "in1k-val" else "train"
        assert set(table.column("split").to_pylist()) == {split}
        assert all(p.startswith(f"{split}/") and (root / p).is_file() for p in paths)
        if split == "train":  # class-balanced: round(f·n_c), at least one
            counts = np.bincount(labels, minlength=len(classes))
            expected = fraction_counts(np.array([CLASS_SIZES[w] for w in classes]), info.fraction)
            assert counts.tolist() == expected.tolist()
    assert read_manifest_info(tmp_path / "m" / "in1k-val.parquet").num_images == 12


def test_same_inputs_give_byte_identical_files(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    _build(tmp_path / "a", train=root / "train", val=root / "val")
    _build(tmp_path / "b", train=root / "train", val=root / "val")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert len(_files(tmp_path / "a")) == 5


def test_independent_of_scan_and_listing_order(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    _build(tmp_path / "scan", train=root / "train", subsets=("in1k-20pct", "in1k-50pct"))
    for seed in (1, 2):
        listing = tmp_path / f"listing{seed}.txt"
        listing.write_text(listing_text(root / "train", "train/", shuffle_seed=seed))
        _build(tmp_path / f"l{seed}", listing=listing, subsets=("in1k-20pct", "in1k-50pct"))
        assert _files(tmp_path / f"l{seed}") == _files(tmp_path / "scan")


def test_csv_listing_gives_the_same_manifests(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    lines = listing_text(root / "train", "train/").splitlines()
    (tmp_path / "l.txt").write_text("\n".join(lines) + "\n")
    rows = ["path,wnid"] + [",".join(line.split(" ")) for line in reversed(lines)]
    (tmp_path / "l.csv").write_text("\r\n".join(rows) + "\r\n")
    _build(tmp_path / "txt", listing=tmp_path / "l.txt", subsets=("in1k-50pct",))
    _build(tmp_path / "csv", listing=tmp_path / "l.csv", subsets=("in1k-50pct",))
    assert _files(tmp_path / "txt") == _files(tmp_path / "csv")


def test_fractions_are_nested(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    _build(tmp_path / "m", train=root / "train", subsets=IN1K[:4], fractions=(0.05, 0.3))
    names = ["in1k-5pct", "in1k-10pct", "in1k-20pct", "in1k-30pct", "in1k-50pct", "in1k-100pct"]
    sets = [set(_paths(tmp_path / "m", n)) for n in names]
    assert [len(s) for s in sets] == [5, 7, 14, 22, 37, 72]
    assert all(a < b for a, b in itertools.pairwise(sets))


def test_a_different_seed_gives_a_different_subset(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    for seed in (0, 1):
        _build(tmp_path / f"s{seed}", train=root / "train", subsets=("in1k-50pct",), seed=seed)
    a, b = _paths(tmp_path / "s0", "in1k-50pct"), _paths(tmp_path / "s1", "in1k-50pct")
    assert len(a) == len(b) and a != b
    assert read_manifest_info(tmp_path / "s1" / "in1k-50pct.parquet").seed == 1


def test_flat_val_with_loc_val_solution_csv(tmp_path: Path) -> None:
    root = imagenet_flat_val(tmp_path)
    _build(tmp_path / "m", train=root / "train", val=root / "val", subsets=("in1k-val",))
    table, info = read_manifest(tmp_path / "m" / "in1k-val.parquet")
    assert table.num_rows == 8 and info.source_input == "val"
    pairs = dict(
        zip(table.column("path").to_pylist(), table.column("wnid").to_pylist(), strict=True)
    )
    csv_rows = (root / "LOC_val_solution.csv").read_text().splitlines()[1:]
    expected = {f"val/{r.split(',')[0]}.JPEG": r.split(",")[1].split()[0] for r in csv_rows}
    assert pairs == expected
    # the CSV named explicitly, from elsewhere
    moved = tmp_path / "elsewhere.csv"
    (root / "LOC_val_solution.csv").rename(moved)
    _build(tmp_path / "m2", train=root / "train", val=root / "val", val_csv=moved,
           subsets=("in1k-val",))  # fmt: skip
    assert _files(tmp_path / "m2") == _files(tmp_path / "m")


def test_in22k_holds_out_a_disjoint_val_set(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "in22k", {"n0001": 1, "n0002": 3, "n0003": 10, "n0004": 40})
    _build(tmp_path / "m", source_kind="in22k", train=root, fractions=(0.5,),
           subsets=("in22k", "in22k-val"))  # fmt: skip
    train, val = set(_paths(tmp_path / "m", "in22k")), set(_paths(tmp_path / "m", "in22k-val"))
    assert not train & val and len(train | val) == 54
    table, info = read_manifest(tmp_path / "m" / "in22k-val.parquet")
    assert np.bincount(table.column("label").to_numpy(), minlength=4).tolist() == [0, 1, 5, 5]
    assert info.split == "val" and info.holdout_per_class == 5 and info.source_input == "train"
    assert set(_paths(tmp_path / "m", "in22k-50pct")) < train
    assert all(p.startswith("in22k/") for p in train)


def test_in100_uses_the_cmc_classes(tmp_path: Path) -> None:
    cmc = load_class_list("in100_cmc")
    assert len(cmc) == 100 and len(set(cmc)) == 100 and cmc[:2] == ("n02869837", "n01749939")
    sizes = {w: 2 for w in cmc} | {"n00000001": 2, "n99999999": 2}
    root = tmp_path / "imagenet"
    make_tree(root / "train", sizes)
    make_tree(root / "val", sizes)
    _build(tmp_path / "m", train=root / "train", val=root / "val", subsets=("in100", "in100-val"))
    for name in ("in100", "in100-val"):
        table, info = read_manifest(tmp_path / "m" / f"{name}.parquet")
        assert info.classes == tuple(sorted(cmc)) and info.class_subset == "in100_cmc"
        assert table.num_rows == 200 and set(table.column("label").to_pylist()) == set(range(100))


def test_names_for_any_fraction_and_prefix(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    results = _build(tmp_path / "m", source_kind="folder", name_prefix="places",
                     train=root / "train", fractions=(0.125,))  # fmt: skip
    assert [m.info.name for m in results] == ["places-12.5pct"]
    results = _build(tmp_path / "m", source_kind="folder", name_prefix="places",
                     train=root / "train", val=root / "val")  # fmt: skip
    assert [m.info.name for m in results] == ["places-100pct", "places-val"]


def test_rebuild_leaves_identical_manifests_alone(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    _build(tmp_path / "m", train=root / "train", subsets=("in1k-10pct",))
    target = tmp_path / "m" / "in1k-10pct.parquet"
    before = target.stat().st_mtime_ns
    (result,) = _build(tmp_path / "m", train=root / "train", subsets=("in1k-10pct",))
    assert result.status == "unchanged" and target.stat().st_mtime_ns == before


def test_read_manifest_api(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    (result,) = _build(tmp_path / "m", train=root / "train", subsets=("in1k-100pct",))
    path = tmp_path / "m" / "in1k-100pct.parquet"
    table, info = read_manifest(path, columns=["path", "label"])
    assert table.column_names == ["path", "label"]
    frame, _ = read_manifest(path, as_pandas=True)
    assert list(frame.columns) == ["path", "label", "wnid", "split", "key"]
    assert manifest_digest(path) == info.digest == result.info.digest
    assert info.num_classes == 4 and result.per_class_max == 33 and result.per_class_min == 7


def test_scan_reports_what_it_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_tree(tmp_path / "train", {"n01": 2, "n02": 1})
    (root / "n01" / "notes.txt").write_text("x")
    (root / "n01" / ".hidden.jpg").write_bytes(b"")
    (root / "n01" / "nested").mkdir()
    (root / "n02" / "x.PNG").write_bytes(b"")
    (root / "n03").mkdir()  # empty class folder: warned about and left out
    (root / "README").write_text("x")
    listing = scan_tree(root, "train/")
    assert listing.skipped == {
        ".txt files": 1,
        "hidden files": 1,
        "sub-folders": 1,
        "files outside class folders": 1,
    }
    assert listing.empty_classes == ("n03",) and listing.wnids == ["n01", "n02"]
    assert len(listing.paths) == 4 and "n03" in caplog.text


def test_non_ascii_paths_sort_in_byte_order(tmp_path: Path) -> None:
    names = ["b.jpg", "Z.jpg", "é.jpg", "a b.jpg", "漢.jpg", "e.jpg"]
    for name in names:
        (tmp_path / "t" / "n1").mkdir(parents=True, exist_ok=True)
        (tmp_path / "t" / "n1" / name).write_bytes(b"")
    _build(tmp_path / "m", source_kind="folder", train=tmp_path / "t")
    expected = sorted((f"t/n1/{n}" for n in names), key=lambda p: p.encode())
    assert _paths(tmp_path / "m", "folder-100pct") == expected


def test_data_root_can_be_the_train_folder(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    train = root / "train"
    _build(tmp_path / "m", train=train, data_root=train, subsets=("in1k-10pct",))
    paths = _paths(tmp_path / "m", "in1k-10pct")
    assert paths[0].startswith("n01440764/") and all((train / p).is_file() for p in paths)


def test_listing_with_bom_crlf_and_no_final_newline(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    lines = listing_text(root / "train", "train/").splitlines()
    plain, odd = tmp_path / "plain.txt", tmp_path / "odd.txt"
    plain.write_text("\n".join(lines) + "\n")
    odd.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())
    _build(tmp_path / "a", listing=plain, subsets=("in1k-100pct",))
    _build(tmp_path / "b", listing=odd, subsets=("in1k-100pct",))
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
