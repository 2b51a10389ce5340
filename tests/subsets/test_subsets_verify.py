"""verify: paths exist (and decode), labels agree with the class list; exit 1 on problems."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from subsets_fixtures import imagenet

from scaling.cli import main
from subsets.build import BuildConfig, build_subsets
from subsets.errors import SubsetError
from subsets.verify import verify_manifest


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path]:
    root = imagenet(tmp_path, real=True)
    build_subsets(
        BuildConfig(out_dir=tmp_path / "m", train=root / "train", subsets=("in1k-50pct",))
    )
    return root, tmp_path / "m" / "in1k-50pct.parquet"


def test_a_good_manifest_verifies(built: tuple[Path, Path]) -> None:
    root, manifest = built
    for decode in (False, True):
        report = verify_manifest(manifest, root, decode=decode)
        assert report.ok and report.checked == 37 and report.problems == {}


def test_missing_and_corrupt_images(built: tuple[Path, Path], capsys: pytest.CaptureFixture):
    root, manifest = built
    paths = pq.read_table(manifest, columns=["path"]).column("path").to_pylist()
    (root / paths[3]).unlink()
    (root / paths[5]).write_bytes(b"\xff\xd8 not a jpeg")
    report = verify_manifest(manifest, root)
    assert report.problems == {"missing": 1}
    assert report.examples["missing"] == [f"{paths[3]}: missing"]
    report = verify_manifest(manifest, root, decode=True)
    assert report.problems == {"missing": 1, "undecodable": 1}
    assert report.examples["undecodable"][0].startswith(f"{paths[5]}: undecodable:")
    assert main(["subsets", "verify", str(manifest), "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: 37 images checked" in out and f"missing: {paths[3]}: missing" in out
    assert main(["subsets", "verify", str(manifest), "--root", str(root), "--decode"]) == 1
    assert f"undecodable: {paths[5]}: undecodable" in capsys.readouterr().out


def test_labels_that_disagree_with_the_class_list(built: tuple[Path, Path]) -> None:
    root, manifest = built
    table = pq.read_table(manifest)
    labels = pc.if_else(pc.equal(table.column("label"), 0), 1, table.column("label"))
    tampered = table.set_column(1, "label", labels.cast(pa.int32()))
    pq.write_table(tampered, manifest)
    report = verify_manifest(manifest, root)
    assert report.problems["label"] == 4  # class 0 had round(0.5·7) = 4 images
    assert report.problems["digest"] == 1
    assert "label disagrees with the class list" in report.examples["label"][0]


def test_verify_cli_ok_and_bad_root(built: tuple[Path, Path], capsys: pytest.CaptureFixture):
    root, manifest = built
    assert main(["subsets", "verify", str(manifest), "--root", str(root), "--decode"]) == 0
    assert "OK: 37 images" in capsys.readouterr().out
    assert main(["subsets", "verify", str(manifest), "--root", str(root / "nope")]) == 2
    assert "error: root" in capsys.readouterr().err
    with pytest.raises(SubsetError, match=r"manifest .*absent\.parquet: no such file"):
        verify_manifest(root / "absent.parquet", root)
