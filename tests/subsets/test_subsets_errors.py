"""Bad input: every error names what is wrong and where; the CLI exits 2 and writes nothing."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from subsets_fixtures import CLASS_SIZES, imagenet, imagenet_flat_val, make_tree

from scaling.cli import main
from subsets.build import BuildConfig, build_subsets
from subsets.errors import SubsetError
from subsets.listing import read_listing
from subsets.manifest import read_manifest_info


def _build(out: Path, **kwargs) -> None:
    build_subsets(BuildConfig(out_dir=out, **kwargs))


def _listing(tmp_path: Path, text: str, name: str = "l.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_missing_train_root(tmp_path: Path) -> None:
    with pytest.raises(SubsetError, match=r"train .*/nope: no such folder"):
        _build(tmp_path / "m", train=tmp_path / "nope")


def test_empty_train_root(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(
        SubsetError, match=r"train .*/train: no class folders <wnid>/<image> \(empty\)"
    ):
        _build(tmp_path / "m", train=tmp_path / "train")


def test_class_folders_without_images(tmp_path: Path) -> None:
    (tmp_path / "train" / "n01").mkdir(parents=True)
    (tmp_path / "train" / "n01" / "a.txt").write_text("x")
    with pytest.raises(SubsetError, match=r"its 1 class folders hold no images"):
        _build(tmp_path / "m", train=tmp_path / "train")


def test_empty_class_folder_is_a_listed_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_tree(tmp_path / "train", {"n01": 2})
    (root / "n02").mkdir()
    (root / "n03").mkdir()
    result = build_subsets(BuildConfig(out_dir=tmp_path / "m", source_kind="folder", train=root))
    assert "2 class folders hold no images and are left out: n02, n03" in caplog.text
    assert result.sources[0].listing.empty_classes == ("n02", "n03")
    assert result.manifests[0].info.classes == ("n01",)


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.2])
def test_fraction_outside_unit_interval(tmp_path: Path, fraction: float) -> None:
    root = imagenet(tmp_path)
    with pytest.raises(SubsetError, match=rf"--fraction: must be in \(0, 1\], got {fraction}"):
        _build(tmp_path / "m", train=root / "train", fractions=(fraction,))


def test_fraction_outside_unit_interval_by_name(tmp_path: Path) -> None:
    with pytest.raises(SubsetError, match=r"subset in1k-150pct: must be in \(0, 1\], got 1.5"):
        _build(tmp_path / "m", train=tmp_path, subsets=("in1k-150pct",))


def test_unknown_subset_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(
        SubsetError,
        match=r"unknown subset 'in1k-tiny' \(source kind in1k\); valid: in1k-10pct, in1k-20pct, "
        r"in1k-50pct, in1k-100pct, in1k-val, in100, in100-val, in1k-<N>pct",
    ):
        _build(tmp_path / "m", train=tmp_path, subsets=("in1k-tiny",))


def test_subset_of_another_source_kind(tmp_path: Path) -> None:
    with pytest.raises(
        SubsetError, match=r"in22k-val is drawn from source kind in22k.*--source-kind"
    ):
        _build(tmp_path / "m", train=tmp_path, subsets=("in22k-val",))


def test_unknown_source_kind(tmp_path: Path) -> None:
    with pytest.raises(SubsetError, match=r"unknown source kind 'in2k'; valid: in1k, in22k, demo"):
        _build(tmp_path / "m", train=tmp_path, source_kind="in2k")


def test_val_subset_without_a_val_source(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    with pytest.raises(SubsetError, match=r"in1k-val needs a val split: pass --val DIR"):
        _build(tmp_path / "m", train=root / "train", subsets=("in1k-val",))


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("a/1.jpg n1\na/2.jpg\n", 2, r"expected '<path> <wnid>' separated by one space"),
        ("a/1.jpg n1\n\na/2 b.jpg n1\n", 3, r"expected '<path> <wnid>'.*got 'a/2 b.jpg n1'"),
        ("a/1.jpg n1\na/2.jpg \n", 2, r"expected '<path> <wnid>'"),
        ("a/1.jpg n1\n/abs/2.jpg n1\n", 2, r"absolute path"),
        ("a/1.jpg n1\n\n\na/../2.jpg n1\n", 4, r"'\.\.' in path: 'a/\.\./2.jpg'"),
        (b"a/1.jpg n1\na/\xff.jpg n1\n", 2, r"not valid UTF-8"),
    ],
)
def test_listing_line_that_does_not_parse(
    tmp_path: Path, text: str | bytes, line: int, what: str
) -> None:
    path = _listing(tmp_path, text)
    with pytest.raises(SubsetError, match=rf"l\.txt line {line}: {what}"):
        read_listing(path)


def test_csv_listing_line_that_does_not_parse(tmp_path: Path) -> None:
    path = _listing(tmp_path, "path,wnid\na/1.jpg,n1\na/2.jpg,n1,extra\n", "l.csv")
    with pytest.raises(SubsetError, match=r"l\.csv line 3: expected 2 CSV fields \(path,wnid\)"):
        read_listing(path)


def test_listing_without_images(tmp_path: Path) -> None:
    with pytest.raises(SubsetError, match=r"none of its 2 paths is an image"):
        read_listing(_listing(tmp_path, "a/1.txt n1\na/2.gif n1\n"))
    with pytest.raises(SubsetError, match=r"listing .*empty\.txt: no entries"):
        read_listing(_listing(tmp_path, "\n\n", "empty.txt"))


def test_duplicate_paths_in_a_listing(tmp_path: Path) -> None:
    path = _listing(tmp_path, "a/1.jpg n1\na/2.txt n1\na/2.jpg n1\n\na/1.jpg n2\n")
    with pytest.raises(
        SubsetError, match=r"duplicate path 'a/1.jpg': .*l\.txt line 1 and .*l\.txt line 5"
    ):
        _build(tmp_path / "m", listing=path, source_kind="folder")


def test_duplicate_image_ids_in_the_val_csv(tmp_path: Path) -> None:
    root = imagenet_flat_val(tmp_path)
    csv = root / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([*lines, lines[2]]) + "\n")
    with pytest.raises(
        SubsetError,
        match=rf"LOC_val_solution\.csv line {len(lines) + 1}: duplicate path: "
        r"ImageId ILSVRC2012_val_00000002 is already on line 3",
    ):
        _build(tmp_path / "m", train=root / "train", val=root / "val")


def test_val_csv_naming_a_wnid_unknown_to_train(tmp_path: Path) -> None:
    root = imagenet_flat_val(tmp_path)
    csv = root / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[1].split()[0], "n09999999")
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        SubsetError, match=r"LOC_val_solution\.csv line 4: wnid n09999999 is unknown to train"
    ):
        _build(tmp_path / "m", train=root / "train", val=root / "val")


def test_val_folder_with_a_class_unknown_to_train(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    make_tree(root / "val", {"n07777777": 1})
    with pytest.raises(SubsetError, match=r"val/n07777777/.*wnid n07777777 is unknown to train"):
        _build(tmp_path / "m", train=root / "train", val=root / "val")


def test_val_csv_naming_a_missing_image(tmp_path: Path) -> None:
    root = imagenet_flat_val(tmp_path)
    (root / "val" / "ILSVRC2012_val_00000003.JPEG").unlink()
    with pytest.raises(
        SubsetError, match=r"line 4: no image file for ImageId ILSVRC2012_val_00000003"
    ):
        _build(tmp_path / "m", train=root / "train", val=root / "val")


def test_flat_val_without_a_csv(tmp_path: Path) -> None:
    root = imagenet_flat_val(tmp_path)
    (root / "LOC_val_solution.csv").unlink()
    with pytest.raises(SubsetError, match=r"no class folders and no LOC_val_solution.csv"):
        _build(tmp_path / "m", train=root / "train", val=root / "val")


def test_in100_on_a_tree_without_the_cmc_classes(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    with pytest.raises(SubsetError, match=r"in100: 100 of the 100 classes of in100_cmc are not in"):
        _build(tmp_path / "m", train=root / "train", subsets=("in100",))
    assert not (tmp_path / "m").exists()


def test_output_built_with_another_seed_or_source(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    _build(tmp_path / "m", train=root / "train", subsets=("in1k-10pct",))
    before = (tmp_path / "m" / "in1k-10pct.parquet").read_bytes()
    with pytest.raises(SubsetError, match=r"already holds in1k-10pct.parquet, built with seed 0, "
                       r"not 1; pass --force"):  # fmt: skip
        _build(tmp_path / "m", train=root / "train", subsets=("in1k-20pct",), seed=1)
    other = make_tree(tmp_path / "other" / "train", CLASS_SIZES | {"n09999999": 3})
    with pytest.raises(SubsetError, match=r"built from a different train source \(digest"):
        _build(tmp_path / "m", train=other, subsets=("in1k-10pct",))
    assert (tmp_path / "m" / "in1k-10pct.parquet").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["in1k-10pct.parquet"]
    _build(tmp_path / "m", train=other, subsets=("in1k-10pct",), force=True)
    assert read_manifest_info(tmp_path / "m" / "in1k-10pct.parquet").num_classes == 5


def test_a_file_that_is_not_a_manifest(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    path.write_text("not parquet")
    with pytest.raises(SubsetError, match=r"x\.parquet: not a Parquet file"):
        read_manifest_info(path)
    with pytest.raises(SubsetError, match=r"manifest .*y\.parquet: no such file"):
        read_manifest_info(tmp_path / "y.parquet")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train", "{tmp}/nope"], "error: train .*nope: no such folder"),
        (["--train", "{tmp}/imagenet/train", "--fraction", "2"], r"error: --fraction: must be"),
        (["--train", "{tmp}/imagenet/train", "--subsets", "in1k-x"], "error: unknown subset"),
        (["--train", "{tmp}/imagenet/train", "--subsets", "in100"], "error: in100: 100 of"),
    ],
)
def test_cli_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    imagenet(tmp_path)
    out = tmp_path / "manifests"
    argv = ["subsets", "build", "--out", str(out), *(a.format(tmp=tmp_path) for a in args)]
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_file_names_that_are_not_utf8_or_hold_a_newline(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "train", {"n01": 2})
    bad = root / "n01" / "bad\nname.jpg"
    bad.write_bytes(b"")
    with pytest.raises(SubsetError, match=r"train: a file name holds a newline"):
        _build(tmp_path / "m", source_kind="folder", train=root)
    bad.unlink()
    with open(os.path.join(os.fsencode(root / "n01"), b"\xff\xfe.jpg"), "wb"):
        pass
    with pytest.raises(
        SubsetError, match=r"train: a file name is not valid UTF-8: b'train/n01/\\xff\\xfe.jpg'"
    ):
        _build(tmp_path / "m", source_kind="folder", train=root)


def test_an_empty_held_out_set(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "in22k", {"n01": 4, "n02": 6})
    with pytest.raises(SubsetError, match=r"in22k-val: selects no images"):
        _build(tmp_path / "m", source_kind="in22k", train=root, holdout_per_class=0)
