"""Input files that are no files (found by an adversarial pass over the CLI's inputs): a
folder or a symbolic link loop where a manifest, listing or val CSV should be was reported
as "no such file"; now each says what is there instead, with exit code 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scaling.cli import main
from subsets.build import BuildConfig, build_subsets
from subsets.errors import SubsetError
from subsets.listing import read_listing
from subsets.manifest import manifest_digest, read_manifest_info
from subsets.val import read_val_csv

READERS = {
    "manifest": read_manifest_info,
    "listing": read_listing,
    "val CSV": read_val_csv,
}


def _not_a_file(path: Path, how: str) -> None:
    if how == "folder":
        path.mkdir()
    elif how == "loop":
        os.symlink(path.name, path)


@pytest.mark.parametrize("what", READERS)
@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("folder", "is a folder, not a file"),
        ("loop", r"a symbolic link that leads to no file \(a loop\?\)"),
        ("nothing", "no such file"),
    ],
)
def test_an_input_that_is_no_file_says_what_is_there(
    tmp_path: Path, what: str, how: str, says: str
) -> None:
    path = tmp_path / "input.x"
    _not_a_file(path, how)
    with pytest.raises(SubsetError, match=rf"^{what} {path}: {says}$"):
        READERS[what](path)


def test_verify_of_a_folder_and_a_loop(tmp_path: Path, capsys) -> None:
    folder, loop = tmp_path / "a.parquet", tmp_path / "b.parquet"
    _not_a_file(folder, "folder")
    _not_a_file(loop, "loop")
    with pytest.raises(SubsetError, match=r"is a folder, not a file"):
        manifest_digest(folder)
    with pytest.raises(SubsetError, match=r"leads to no file"):
        manifest_digest(loop)
    assert main(["subsets", "info", str(folder)]) == 2
    assert f"error: manifest {folder}: is a folder, not a file" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_demo_where_no_folder_can_be_made(capsys) -> None:
    """``subsets demo /proc/x`` stopped with a FileNotFoundError traceback (root passes
    every access check there; only mkdir says no)."""
    assert main(["subsets", "demo", "/proc/mimscale-demo"]) == 2
    err = capsys.readouterr().err
    assert "error: demo: /proc/mimscale-demo: cannot write in /proc (" in err
    assert "Traceback" not in err


def test_demo_under_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "afile" / "demo"
    assert main(["subsets", "demo", str(out)]) == 2
    assert f"error: demo: {out}: {tmp_path / 'afile'} is a file, not a folder" in (
        capsys.readouterr().err
    )


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("verb", ["build", "pack"])
def test_build_and_pack_where_nothing_can_be_written(verb: str, demo_dir: Path, capsys) -> None:
    """``subsets build|pack --out /proc/x`` stopped with a FileNotFoundError traceback
    after the scan: the access check passes for root, the write does not."""
    argv = {
        "build": ["--train", str(demo_dir / "train"), "--subsets", "in1k-10pct"],
        "pack": [str(demo_dir / "manifests" / "demo-1pct.parquet")],
    }[verb]
    out = "/proc/mimscale-out"
    assert main(["subsets", verb, *argv, "--root", str(demo_dir), "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"error: --out {out}: cannot write in /proc (" in err and "Traceback" not in err


@pytest.mark.parametrize("inside", ["train/n00000003", "train/manifests", "train/./x/../y"])
def test_build_into_the_image_tree_is_refused(tmp_path: Path, demo_dir: Path, inside: str) -> None:
    """``subsets build --train T --out T/<class>`` wrote the manifest among the images
    (exit 0), where every later scan meets it."""
    import shutil

    root = tmp_path / "demo"
    shutil.copytree(demo_dir / "train", root / "train")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    out = root / inside
    with pytest.raises(SubsetError, match=rf"^--out {out}: inside the image tree --train "):
        build_subsets(
            BuildConfig(out_dir=out, train=root / "train", data_root=root, subsets=["in1k-10pct"])
        )
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
